//! Test harness shared by the gateway's integration tests: the real `gateway` binary on free
//! 127.0.0.1 ports with a config written to a temp dir, real HTTP upstream servers with
//! controllable behaviour, and a raw HTTP/1.1 client for keep-alive and slow-client checks.
//!
//! ```ignore
//! mod common;
//! use common::{GatewayProcess, TestUpstream};
//!
//! let up = TestUpstream::start("a").await;
//! let gw = GatewayProcess::start(&format!(
//!     "upstreams:\n  u:\n    servers: [\"{}\"]\nroutes:\n  - path_prefix: /\n    upstream: u\n",
//!     up.addr
//! )).await;
//! let resp = common::client().get(gw.url("/x")).send().await.unwrap();
//! ```
//!
//! Every process and server is killed on drop; every wait is bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// How long the gateway may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (see [`redis_harness::free_port`]: below the ephemeral range,
/// never the same twice in one test binary). Tests run in parallel threads, and the admin
/// listener uses SO_REUSEPORT (for the SIGQUIT hand-off), so two gateways must never be given
/// one port.
pub fn free_port() -> u16 {
    redis_harness::free_port()
}

/// A reqwest client without proxies, with a 30 s overall timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// The real `gateway` binary, running with a config file in a temp dir. Killed on drop.
pub struct GatewayProcess {
    /// Temp dir holding `gateway.yaml` and `gateway.log`.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    child: Option<Child>,
}

impl GatewayProcess {
    /// Writes `yaml` (everything except `listen` and `admin_listen`, which the harness adds with
    /// free ports) and starts the gateway; returns once both listeners answer.
    /// Panics (with the gateway's log) if it exits or does not come up within [`START_TIMEOUT`].
    pub async fn start(yaml: &str) -> GatewayProcess {
        Self::start_with_env(yaml, &[]).await
    }

    /// Like [`GatewayProcess::start`], with extra environment variables for the process.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.path().join("gateway.yaml");
        let mut gw = GatewayProcess {
            dir,
            config_path,
            listen,
            admin,
            child: None,
        };
        gw.write_config(yaml);
        gw.child = Some(gw.spawn(false, env));
        gw.wait_ready().await;
        gw
    }

    fn spawn(&self, upgrade: bool, env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.arg("-c")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("GATEWAY_UPGRADE_SOCK", self.dir.path().join("upgrade.sock"))
            .env_remove("GATEWAY_CONFIG")
            .env_remove("GATEWAY_UPGRADE")
            .env_remove("GATEWAY_CONFIG_TEST")
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if upgrade {
            cmd.arg("-u");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn gateway")
    }

    /// Pingora's zero-downtime upgrade: starts a new process with `-u` on the same config, sends
    /// SIGQUIT to the running one, waits (bounded) for it to exit, and continues with the new
    /// process. Returns the old process's exit status.
    pub async fn upgrade(&mut self) -> ExitStatus {
        let new = self.spawn(true, &[]);
        // Let the new process start listening on the upgrade socket.
        let sock = self.dir.path().join("upgrade.sock");
        let deadline = Instant::now() + START_TIMEOUT;
        while !sock.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.signal("QUIT");
        let mut old = self.child.replace(new).expect("gateway running");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = old.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = old.kill();
                panic!("old gateway did not exit after SIGQUIT:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.wait_ready().await;
        status
    }

    /// The full file text the harness writes for `yaml`.
    pub fn full_config(&self, yaml: &str) -> String {
        format!(
            "listen: \"{}\"\nadmin_listen: \"{}\"\n{}",
            self.listen, self.admin, yaml
        )
    }

    /// Rewrites the config file (same listeners) — follow with [`GatewayProcess::sighup`].
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, self.full_config(yaml)).expect("write config");
    }

    /// Path of the process's combined stdout/stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// Everything the process logged so far. The gateway writes info lines (the access log) in
    /// batches at least every `log_buffer::FLUSH_INTERVAL`: wait a few intervals first, so a line
    /// for something that already happened is there.
    pub fn logs(&self) -> String {
        std::thread::sleep(gateway::log_buffer::FLUSH_INTERVAL * 5);
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `http://<listen><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("gateway running")
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`, `QUIT`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} failed");
    }

    /// SIGHUP: reload the config file.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// SIGTERM: graceful shutdown.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process exit status, if it has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// GET `/metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one series in `/metrics`, e.g. `gateway_config_reloads_total{result="ok"}`
    /// (labels exactly as printed), or `None` if absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        metric_value(&text, series)
    }

    /// Waits (bounded by 5 s) until `series` equals `expected`; returns its last value. Request
    /// metrics are recorded in Pingora's `logging()` hook, just after the client got its response,
    /// so a scrape right after a response may not include that request yet.
    pub async fn wait_metric(&self, series: &str, expected: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series).await;
            if v == Some(expected) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET `/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/status"))
            .send()
            .await
            .expect("GET /status")
            .json()
            .await
            .expect("status JSON")
    }

    /// Waits (bounded by `timeout`) until `f(status)` holds; returns whether it did.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&serde_json::Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(&self.status().await) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit_status() {
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
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    // The signal handlers are installed right after the listeners start.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "gateway did not start within {START_TIMEOUT:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of `series` in a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Runs `gateway -t -c <file with yaml>`; returns (exit code, stdout, stderr).
pub fn config_test(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("test.yaml");
    std::fs::write(&path, yaml).expect("write config");
    config_test_file(&path)
}

/// Runs `gateway -t -c <path>`; returns (exit code, stdout, stderr).
pub fn config_test_file(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("-t")
        .arg("-c")
        .arg(path)
        .env_remove("GATEWAY_CONFIG")
        .env_remove("GATEWAY_CONFIG_TEST")
        .output()
        .expect("run gateway -t");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a [`TestUpstream`] does with requests; change it at any time.
#[derive(Debug)]
pub struct Behaviour {
    /// Status of every answer except `GET /health` (default 200).
    pub status: AtomicU16,
    /// Status of `GET /health` (default 200).
    pub health_status: AtomicU16,
    /// Delay before answering anything except `/health`, in ms (default 0).
    pub delay_ms: AtomicU64,
    /// Delay before answering `/health`, in ms (default 0).
    pub health_delay_ms: AtomicU64,
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Header fields (lower-case names; repeated fields joined with ", ").
    pub headers: HashMap<String, String>,
    /// Body bytes received.
    pub body_len: usize,
}

#[derive(Debug)]
struct Shared {
    name: String,
    behaviour: Behaviour,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A real HTTP/1.1 server on a free 127.0.0.1 port. Answers every path with JSON
/// `{"server": name, "method", "path", "hit": n, "xRealIp", "xForwardedFor", "xRequestId"}` and the
/// header `x-upstream: <name>`; `GET /health` answers `{"status":"ok"}`. [`TestUpstream::kill`]
/// closes the listener and every open connection at once.
pub struct TestUpstream {
    /// Listening address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestUpstream {
    /// Starts a server named `name` on a free port.
    pub async fn start(name: &str) -> TestUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    /// Starts a server on a given address (e.g. to bring a killed server back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> TestUpstream {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => return Self::serve(name, l),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        }
    }

    fn serve(name: &str, listener: tokio::net::TcpListener) -> TestUpstream {
        let addr = listener.local_addr().expect("upstream addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour: Behaviour {
                status: AtomicU16::new(200),
                health_status: AtomicU16::new(200),
                delay_ms: AtomicU64::new(0),
                health_delay_ms: AtomicU64::new(0),
            },
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let s = Arc::clone(&s);
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(Arc::clone(&s), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            conns.abort_all();
            drop(listener);
        });
        TestUpstream {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The behaviour switches.
    pub fn behaviour(&self) -> &Behaviour {
        &self.shared.behaviour
    }

    /// Answer every non-health request with `status`.
    pub fn set_status(&self, status: u16) {
        self.shared.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// Answer `GET /health` with `status`.
    pub fn set_health_status(&self, status: u16) {
        self.shared
            .behaviour
            .health_status
            .store(status, Ordering::SeqCst);
    }

    /// Wait `delay` before answering non-health requests.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Wait `delay` before answering `/health`.
    pub fn set_health_delay(&self, delay: Duration) {
        self.shared
            .behaviour
            .health_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Non-health requests received (counted when they arrive).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// `/health` requests received.
    pub fn health_hits(&self) -> usize {
        self.shared.health_hits.load(Ordering::SeqCst)
    }

    /// Non-health requests being answered right now.
    pub fn inflight(&self) -> usize {
        self.shared.inflight.load(Ordering::SeqCst)
    }

    /// The most non-health requests ever in flight at once.
    pub fn max_inflight(&self) -> usize {
        self.shared.max_inflight.load(Ordering::SeqCst)
    }

    /// Resets the counters and the request log.
    pub fn reset(&self) {
        self.shared.hits.store(0, Ordering::SeqCst);
        self.shared.health_hits.store(0, Ordering::SeqCst);
        self.shared.max_inflight.store(0, Ordering::SeqCst);
        self.shared.seen.lock().unwrap().clear();
    }

    /// Every non-health request received, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The last non-health request received.
    pub fn last_seen(&self) -> Option<Seen> {
        self.shared.seen.lock().unwrap().last().cloned()
    }

    /// Stops listening and drops every open connection at once (like a killed process).
    pub async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct InflightGuard<'a>(&'a Shared);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    s: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_health = req.uri().path() == "/health";
    if is_health {
        s.health_hits.fetch_add(1, Ordering::SeqCst);
        let delay = s.behaviour.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let status = s.behaviour.health_status.load(Ordering::SeqCst);
        return Ok(json_response(
            status,
            &s.name,
            r#"{"status":"ok"}"#.to_string(),
        ));
    }
    let hit = s.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let now = s.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_inflight.fetch_max(now, Ordering::SeqCst);
    let _guard = InflightGuard(&s);

    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let path = req.uri().path().to_string();
    let mut headers: HashMap<String, String> = HashMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    s.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        uri,
        headers: headers.clone(),
        body_len,
    });
    let delay = s.behaviour.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = s.behaviour.status.load(Ordering::SeqCst);
    let body = serde_json::json!({
        "server": s.name,
        "method": method,
        "path": path,
        "hit": hit,
        "bodyLen": body_len,
        "xRealIp": headers.get("x-real-ip"),
        "xForwardedFor": headers.get("x-forwarded-for"),
        "xRequestId": headers.get("x-request-id"),
    });
    Ok(json_response(status, &s.name, body.to_string()))
}

fn json_response(status: u16, name: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// A parsed HTTP/1.1 response from [`RawConn`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields (lower-case names; repeated fields joined with ", ").
    pub headers: HashMap<String, String>,
    /// Body (Content-Length framed; chunked bodies are de-chunked).
    pub body: String,
}

impl RawResponse {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// One client TCP connection speaking raw HTTP/1.1 (blocking, with a read timeout), to check
/// keep-alive, slow clients and exact framing.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr` with a 10 s read timeout.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `GET path` with `Host` and any `extra` header lines (each `"Name: value"`), keep-alive.
    pub fn get(&mut self, path: &str, extra: &[&str]) -> std::io::Result<RawResponse> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes())?;
        self.read_response()
    }

    /// Reads one response (blocking, bounded by the read timeout).
    pub fn read_response(&mut self) -> std::io::Result<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers: HashMap<String, String> = HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                headers
                    .entry(k)
                    .and_modify(|e| {
                        e.push_str(", ");
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
        }
        let body = if let Some(len) = headers.get("content-length") {
            let len: usize = len.parse().map_err(std::io::Error::other)?;
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect::<Vec<u8>>()
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            self.read_chunked()?
        } else {
            Vec::new()
        };
        Ok(RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// True when the server has closed the connection (reads EOF within `wait`).
    pub fn is_closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).ok();
        let mut b = [0u8; 1024];
        let deadline = Instant::now() + wait;
        let closed = loop {
            match self.stream.read(&mut b) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok();
        closed
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut b = [0u8; 8192];
        let n = self.stream.read(&mut b)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&b[..n]);
        Ok(())
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill()?;
            };
            let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(std::io::Error::other)?;
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            out.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(out);
            }
        }
        Err(std::io::Error::other("too many chunks"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A minimal config body (no `listen`/`admin_listen`) routing `/` to one upstream `u` with the
/// given servers, one thread, quick shutdown.
pub fn simple_config(servers: &[SocketAddr]) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "server:\n  threads: 1\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\nupstreams:\n  u:\n    servers: [{list}]\nroutes:\n  - path_prefix: /\n    upstream: u\n"
    )
}
