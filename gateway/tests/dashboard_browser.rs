//! The admin dashboard in a real browser (SPEC §8, GitHub issue 6).
//!
//! Starts the real `gateway` binary with a generated config (a pool of two real axum servers, a
//! tight `limit_req` zone), opens `GET /` of its admin listener in headless Chromium and drives
//! the page over the DevTools protocol (a small WebSocket client over `TcpStream`, below). Then it
//! floods the limited route, kills one upstream server and asserts from the page's DOM that the
//! limiter rejections rose and the server's row turned `ejected`/`down`; it saves a screenshot
//! (`<target>/test-artifacts/dashboard.png`), checks that the page logged no console error and
//! threw no exception, and finally kills the gateway and checks that the page says so without
//! throwing.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; `CHROMIUM=/path` overrides the
//! lookup): the test fails, never skips, without it. `DASHBOARD_DEMO_SECONDS=N` runs N seconds of
//! mixed traffic (with floods) before the fault, to fill the charts for a documentation shot.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

mod common;

use common::{GatewayProcess, TestUpstream};

/// Bound of every wait for the page to show something.
const PAGE_WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------------
// Plain HTTP/1.1 over TcpStream (admin readiness, DevTools discovery, test traffic)
// ------------------------------------------------------------------------------------------------

/// One `GET` with `Connection: close`; returns the status code and the body. Reads up to the
/// `Content-Length` when there is one (Chromium's DevTools server keeps the connection open).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dashboard-test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| raw.len() >= end + 4 + n) {
                break;
            }
        }
        if raw.len() > 8 << 20 {
            bail!("answer from {addr}{path} larger than 8 MiB");
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no HTTP status line from {addr}{path}: {text:.200}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ------------------------------------------------------------------------------------------------
// Chromium, killed on drop even when an assertion fails
// ------------------------------------------------------------------------------------------------

struct Proc {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name,
            child: Some(child),
            log,
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Fails when the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{} exited early ({status}); log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------------------------------------
// A minimal WebSocket client (RFC 6455: client frames masked, text messages, ping/pong)
// ------------------------------------------------------------------------------------------------

struct WebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
    partial: Vec<u8>,
    mask_seed: u32,
}

impl WebSocket {
    fn connect(addr: SocketAddr, path: &str) -> Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                bail!("WebSocket handshake answer too long");
            }
            stream.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            bail!("WebSocket handshake refused: {head}");
        }
        // Short reads so that callers can check their deadlines.
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            partial: Vec::new(),
            mask_seed: 0x9e37_79b9,
        })
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&short.to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask_seed.to_be_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)?;
        Ok(())
    }

    fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(0x1, text.as_bytes())
    }

    /// One complete frame from the buffer: (fin, opcode, payload).
    fn take_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).context("frame too large")?;
        if len > 64 << 20 {
            bail!("frame of {len} bytes");
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x ^= m[i % 4]);
        }
        self.buf.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }

    /// The next text message, or `None` when none arrived within the short read timeout.
    fn recv_text(&mut self) -> Result<Option<String>> {
        loop {
            while let Some((fin, opcode, payload)) = self.take_frame()? {
                match opcode {
                    0x0..=0x2 => {
                        self.partial.extend_from_slice(&payload);
                        if fin {
                            let msg = String::from_utf8_lossy(&self.partial).into_owned();
                            self.partial.clear();
                            return Ok(Some(msg));
                        }
                    }
                    0x8 => bail!("the browser closed the DevTools connection"),
                    0x9 => self.send_frame(0xA, &payload)?,
                    _ => {}
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("DevTools connection closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Chrome DevTools protocol over that WebSocket
// ------------------------------------------------------------------------------------------------

struct Cdp {
    ws: WebSocket,
    next_id: u64,
    /// Console errors, uncaught exceptions and error log entries, in order.
    errors: Vec<String>,
    /// Whether `Log.entryAdded` errors count (network errors are expected once the admin is gone).
    count_log_errors: bool,
}

impl Cdp {
    fn new(ws: WebSocket) -> Self {
        Self {
            ws,
            next_id: 1,
            errors: Vec::new(),
            count_log_errors: true,
        }
    }

    fn on_event(&mut self, msg: &Value) {
        let params = &msg["params"];
        match msg["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &params["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {} (line {})",
                    d["text"].as_str().unwrap_or(""),
                    d["exception"]["description"].as_str().unwrap_or(""),
                    d["lineNumber"]
                ));
            }
            Some("Runtime.consoleAPICalled") => {
                let kind = params["type"].as_str().unwrap_or("");
                if kind == "error" || kind == "assert" {
                    let args: Vec<String> = params["args"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|v| {
                                    v["value"]
                                        .as_str()
                                        .map(str::to_string)
                                        .unwrap_or_else(|| v["description"].to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    self.errors
                        .push(format!("console.{kind}: {}", args.join(" ")));
                }
            }
            Some("Log.entryAdded") if self.count_log_errors => {
                let e = &params["entry"];
                if e["level"].as_str() == Some("error") {
                    self.errors.push(format!(
                        "log: {} {}",
                        e["text"].as_str().unwrap_or(""),
                        e["url"].as_str().unwrap_or("")
                    ));
                }
            }
            _ => {}
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send_text(&json!({ "id": id, "method": method, "params": params }).to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Some(text) = self.ws.recv_text()? else {
                continue;
            };
            let msg: Value = serde_json::from_str(&text).context("DevTools sent bad JSON")?;
            if msg["id"].as_u64() == Some(id) {
                if let Some(err) = msg.get("error") {
                    bail!("{method}: {err}");
                }
                return Ok(msg["result"].clone());
            }
            self.on_event(&msg);
        }
        bail!("{method}: no answer within 30 s")
    }

    /// Handles events for `d` (console errors arriving meanwhile are recorded).
    fn pump(&mut self, d: Duration) -> Result<()> {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if let Some(text) = self.ws.recv_text()? {
                if let Ok(msg) = serde_json::from_str::<Value>(&text) {
                    self.on_event(&msg);
                }
            }
        }
        Ok(())
    }

    /// Evaluates `expr` in the page and returns its JSON value.
    fn eval(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            bail!("evaluating {expr}: {ex}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Re-evaluates `expr` until it is truthy, at most `PAGE_WAIT`; fails with its last value.
    fn wait_for(&mut self, what: &str, expr: &str) -> Result<Value> {
        let deadline = Instant::now() + PAGE_WAIT;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.eval(expr)?;
            let truthy = match &last {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(last);
            }
            self.pump(Duration::from_millis(250))?;
        }
        bail!(
            "the page never showed {what} within {PAGE_WAIT:?}; last value of `{expr}`: {last}; \
             first page errors: {:#?}",
            &self.errors[..self.errors.len().min(5)]
        )
    }
}

// ------------------------------------------------------------------------------------------------
// Chromium
// ------------------------------------------------------------------------------------------------

fn find_chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Starts headless Chromium on a fresh profile and returns it with its DevTools port.
fn launch_chromium(dir: &Path) -> Result<(Proc, u16)> {
    let bin = find_chromium().ok_or_else(|| {
        anyhow!("chromium not found on PATH (install it: apt-get install -y chromium, or set CHROMIUM=/path)")
    })?;
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile)?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "--window-size=1440,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("about:blank");
    let mut proc = Proc::spawn("chromium", &mut cmd, dir.join("chromium.log"))?;
    // Chromium writes its DevTools port to <profile>/DevToolsActivePort once it listens.
    let port_file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            if let Some(port) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u16>().ok())
            {
                return Ok((proc, port));
            }
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "chromium did not open its DevTools port in 30 s; log:\n{}",
                proc.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Attaches to the first page target of the browser.
fn attach_page(port: u16) -> Result<Cdp> {
    let devtools: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((200, body)) = http_get(devtools, "/json/list") {
            let targets: Value = serde_json::from_str(&body).context("/json/list")?;
            let page = targets
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string);
            if let Some(url) = page {
                let path = url
                    .split_once(&format!("127.0.0.1:{port}"))
                    .map(|(_, p)| p.to_string())
                    .ok_or_else(|| anyhow!("unexpected DevTools URL {url}"))?;
                return Ok(Cdp::new(WebSocket::connect(devtools, &path)?));
            }
        }
        if Instant::now() > deadline {
            bail!("no page target in chromium within 15 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("bad base64 byte {c}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// The gateway
// ------------------------------------------------------------------------------------------------

/// The config under test (the harness adds `listen` and `admin_listen` on free ports): pool
/// `app` of two servers behind a `2r/s` zone on `/api/limited`, and pool `flaky` of one server
/// with a quick breaker (and no passive ejection) on `/api/flaky`.
fn gateway_yaml(a: SocketAddr, b: SocketAddr, c: SocketAddr) -> String {
    format!(
        r#"server:
  threads: 1
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
limit_req_zones:
  tight: {{ key: client_ip, rate: 2r/s }}
upstreams:
  app:
    servers: ["{a}", "{b}"]
    max_inflight: 32
    connect_timeout_ms: 300
    read_timeout_ms: 2000
    retries: 1
    health_check: {{ path: /health, interval_ms: 200, timeout_ms: 150, rise: 2, fall: 2 }}
    outlier: {{ consecutive_failures: 2, base_ejection_ms: 30000, max_ejection_percent: 50 }}
  flaky:
    servers: ["{c}"]
    health_check: {{ path: /health, interval_ms: 500, timeout_ms: 300 }}
    outlier: {{ consecutive_failures: 1000000 }}
    circuit_breaker: {{ failure_rate: 0.5, min_requests: 10, window_ms: 5000, open_ms: 60000 }}
routes:
  - path_prefix: /api/limited
    upstream: app
    limit_req:
      - {{ zone: tight, burst: 3, nodelay: true }}
  - path_prefix: /api/flaky
    upstream: flaky
  - path_prefix: /api/
    upstream: app
"#
    )
}

/// Background traffic: mostly `/api/`, some `/api/flaky`, a few 404s (no route), and the limited
/// route at about 6 r/s (above its 2 r/s, so a steady trickle of 429s).
fn spawn_traffic(gw: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let path = match sent % 12 {
                3 | 9 => "/api/limited/seats",
                1 | 5 | 7 => "/api/flaky/items",
                11 if sent % 36 == 11 => "/nowhere",
                _ => "/api/events",
            };
            let _ = http_get(gw, path);
            sent += 1;
            thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

/// `n` requests as fast as possible on the limited route; returns how many got 429.
fn flood(gw: SocketAddr, n: usize) -> usize {
    (0..n)
        .filter(|_| matches!(http_get(gw, "/api/limited/flood"), Ok((429, _))))
        .count()
}

fn artifact_path() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let base = tmp.parent().map(Path::to_path_buf).unwrap_or(tmp);
    base.join("test-artifacts").join("dashboard.png")
}

#[test]
fn dashboard_shows_flood_and_ejection_in_a_real_browser() -> Result<()> {
    // The harness's servers and gateway are async; its runtime's workers drive them while this
    // thread drives the browser over blocking sockets.
    let rt = tokio::runtime::Runtime::new()?;
    let a = rt.block_on(TestUpstream::start("a"));
    let mut b = rt.block_on(TestUpstream::start("b"));
    let c = rt.block_on(TestUpstream::start("c"));
    let gateway = rt.block_on(GatewayProcess::start(&gateway_yaml(a.addr, b.addr, c.addr)));
    let (gw, admin) = (gateway.listen, gateway.admin);

    let (code, html) = http_get(admin, "/")?;
    assert_eq!(code, 200, "GET / on the admin listener");
    assert!(
        html.contains("dashboard.js"),
        "GET / is not the dashboard page: {html:.300}"
    );

    let dir = tempfile::tempdir()?;
    let (mut chromium, port) = launch_chromium(dir.path())?;
    let mut page = attach_page(port)?;
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        page.call(domain, json!({}))?;
    }
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    )?;
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/") }),
    )?;

    // The page polls both sources and lists both servers as healthy.
    page.wait_for(
        "a live connection",
        r#"document.querySelector('[data-testid="connection"]')?.dataset.state === 'ok'"#,
    )?;
    page.wait_for(
        "three healthy servers",
        r#"[...document.querySelectorAll('[data-testid="server-row"]')].filter(r => r.dataset.state === 'healthy').length === 3"#,
    )?;
    let shown =
        page.eval(r#"document.querySelector('[data-testid="config-path"]').textContent"#)?;
    assert_eq!(
        shown.as_str(),
        gateway.config_path.to_str(),
        "config path shown"
    );
    let breaker = page.eval(
        r#"[...document.querySelectorAll('[data-testid="breaker-state"]')].map(b => b.dataset.upstream + '=' + b.dataset.state)"#,
    )?;
    assert_eq!(
        breaker,
        json!(["app=closed", "flaky=closed"]),
        "breaker states"
    );
    let before = page
        .eval(r#"Number(document.querySelector('[data-testid="ratelimit-rejected-total"]').dataset.value || 0)"#)?
        .as_f64()
        .unwrap_or(0.0);

    // Traffic, then (optionally) a longer demo phase with periodic floods.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = spawn_traffic(gw, Arc::clone(&stop));
    page.pump(Duration::from_secs(3))?;
    let demo_secs: u64 = std::env::var("DASHBOARD_DEMO_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
        .min(600);
    let demo_end = Instant::now() + Duration::from_secs(demo_secs);
    let mut round = 0u64;
    while Instant::now() < demo_end {
        if round % 20 == 7 {
            flood(gw, 40);
        }
        round += 1;
        page.pump(Duration::from_secs(1))?;
    }

    // The fault: a flood on the tight zone, and one upstream server killed.
    let rejected = flood(gw, 30);
    assert!(
        rejected >= 20,
        "30 rapid requests at 2r/s burst 3 gave only {rejected} 429s"
    );
    let dead = b.addr.to_string();
    rt.block_on(b.kill());
    // Requests right after the kill meet its refused connections (retried on the other server):
    // the passive outlier detection usually ejects it before the active checks mark it down.
    for _ in 0..20 {
        let _ = http_get(gw, "/api/events");
    }

    let total = page.wait_for(
        "the limiter rejections rising",
        &format!(
            r#"(() => {{ const v = Number(document.querySelector('[data-testid="ratelimit-rejected-total"]').dataset.value || 0); return v >= {} ? v : 0; }})()"#,
            before + rejected as f64
        ),
    )?;
    let dead_state = page.wait_for(
        "the killed server ejected or down",
        &format!(
            r#"(() => {{ const r = document.querySelector('[data-testid="server-row"][data-server="{dead}"]'); return r && (r.dataset.state === 'ejected' || r.dataset.state === 'down') ? r.dataset.state : ''; }})()"#
        ),
    )?;
    let live_state = page.eval(&format!(
        r#"document.querySelector('[data-testid="server-row"][data-server="{}"]')?.dataset.state"#,
        a.addr
    ))?;
    assert_eq!(live_state, json!("healthy"), "the surviving server's row");
    page.wait_for(
        "the servers-available tile at 2 / 3",
        r#"document.querySelector('[data-testid="servers-available"]').textContent === '2 / 3'"#,
    )?;
    // The background traffic keeps the limited route above its rate: 429s are charted live.
    page.wait_for(
        "a 429 rate in the requests chart",
        r#"Number(document.querySelector('[data-chart="requests-all"] .legend-item[data-series="429"]')?.dataset.value || 0) > 0"#,
    )?;
    let routes = page.eval(
        r#"[...document.querySelectorAll('[data-testid="route-chart"]')].map(r => r.dataset.route)"#,
    )?;
    assert!(
        routes.as_array().is_some_and(|r| r.len() >= 3),
        "expected a chart per route: {routes}"
    );

    // The flaky pool starts failing: its breaker opens and its block turns red.
    c.set_status(500);
    page.wait_for(
        "the flaky breaker open",
        r#"(() => { const b = document.querySelector('[data-testid="breaker-state"][data-upstream="flaky"]'); return b && b.dataset.state === 'open' && b.closest('.upstream').classList.contains('breaker-open') && getComputedStyle(b).backgroundColor !== getComputedStyle(document.querySelector('[data-testid="breaker-state"][data-upstream="app"]')).backgroundColor; })()"#,
    )?;
    page.wait_for(
        "a 5xx rate in the requests chart",
        r#"Number(document.querySelector('[data-chart="requests-all"] .legend-item[data-series="5xx"]')?.dataset.value || 0) > 0"#,
    )?;
    page.pump(Duration::from_millis(1500))?;

    // Screenshot of the whole page: flood, ejection, open breaker.
    let metrics = page.call("Page.getLayoutMetrics", json!({}))?;
    let height = metrics["cssContentSize"]["height"]
        .as_f64()
        .unwrap_or(1800.0)
        .clamp(600.0, 4000.0);
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1440, "height": height.ceil() as u64, "deviceScaleFactor": 1, "mobile": false }),
    )?;
    page.pump(Duration::from_millis(1200))?;
    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }))?;
    let png = decode_base64(shot["data"].as_str().unwrap_or(""))?;
    assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    let out = artifact_path();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &png)?;
    eprintln!(
        "dashboard screenshot: {} ({} bytes); limiter rejections {total}, killed server {dead} is {dead_state}",
        out.display(),
        png.len()
    );

    stop.store(true, Ordering::Relaxed);
    let sent = traffic
        .join()
        .map_err(|_| anyhow!("traffic thread panicked"))?;
    assert!(sent > 0, "no background traffic was sent");
    assert!(
        page.errors.is_empty(),
        "the page logged errors: {:#?}",
        page.errors
    );

    // The admin listener goes away: the page says so and throws nothing.
    drop(gateway);
    page.count_log_errors = false; // failed fetches are logged by the browser itself
    page.wait_for(
        "the admin-unreachable indicator",
        r#"document.querySelector('[data-testid="connection"]')?.dataset.state === 'unreachable'"#,
    )?;
    page.pump(Duration::from_secs(2))?;
    assert!(
        page.errors.is_empty(),
        "the page threw after the admin went away: {:#?}",
        page.errors
    );

    chromium.kill();
    drop((a, c));
    Ok(())
}
