//! Differential test of `limit_req` against the real NGINX (`nginx-light`).
//!
//! The same timed request sequences are replayed three ways and must agree:
//! 1. through the in-process model, `gateway::limit::req::check`, on an exact virtual clock;
//! 2. over HTTP through a real NGINX started here (its own config in a temp dir, a free port,
//!    `limit_req` in front of a static file: NGINX's `return` would run before `limit_req`);
//! 3. over HTTP through the real `gateway` binary, proxying to a real upstream.
//!
//! Per batch of simultaneous requests the numbers of passes and rejections must be identical, and
//! for delaying modes the sorted delays must match within [`DELAY_TOLERANCE_MS`]. Batch times are
//! chosen far from the arithmetic's rounding boundaries, which the test itself verifies by replaying
//! every schedule through the model with each batch shifted by ±[`ROBUSTNESS_SHIFT_MS`] and its
//! requests spread out: all those replays must give the same outcome.
//!
//! NGINX is looked up as `$NGINX`, then on `PATH`, then `/usr/sbin/nginx`; without it the test fails
//! with a clear message (CI installs `nginx-light`).

mod common;
mod redis_support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::config::model::{LimitKey, LimitReqRule, LimitReqZone, Rate};
use gateway::limit::{check, LimitKeyValue, ReqCheck, ReqDecision, ReqZone};

/// Allowed difference between a measured and an expected delay.
const DELAY_TOLERANCE_MS: i64 = 150;
/// Generous bound on serving an undelayed request over HTTP (debug builds, loaded machine).
const MAX_SERVING_MS: u64 = 1000;
/// How far each batch is moved in the robustness replays.
const ROBUSTNESS_SHIFT_MS: i64 = 60;
/// Spacing of requests within a batch in the robustness replays.
const ROBUSTNESS_SPREAD_MS: u64 = 3;

/// How accepted excess is treated.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `nodelay`
    NoDelay,
    /// `delay=N`
    Delay(u64),
    /// Neither: all accepted excess is delayed to the rate.
    Delaying,
}

/// What a zone is keyed on.
#[derive(Debug, Clone, Copy)]
enum Key {
    /// The client address (`$binary_remote_addr` / `client_ip`).
    Ip,
    /// The `X-K` request header (`$http_x_k` / `header:X-K`).
    Header,
}

/// One `limit_req` of a location: its zone's rate and key, and the location's burst and mode.
struct Limit {
    /// Requests per second.
    rate_rps: u64,
    burst: u64,
    mode: Mode,
    key: Key,
}

/// A batch of simultaneous requests.
struct Batch {
    /// Offset from the start of the schedule.
    at_ms: u64,
    count: usize,
    /// Each request sends its own `X-K` value (else all send the same one).
    distinct_header: bool,
}

const fn batch(at_ms: u64, count: usize) -> Batch {
    Batch {
        at_ms,
        count,
        distinct_header: false,
    }
}

const fn limit(rate_rps: u64, burst: u64, mode: Mode) -> Limit {
    Limit {
        rate_rps,
        burst,
        mode,
        key: Key::Ip,
    }
}

/// Zones + one location + a schedule.
struct Scenario {
    name: &'static str,
    limits: &'static [Limit],
    batches: &'static [Batch],
}

const SCENARIOS: &[Scenario] = &[
    // SPEC §7: 15 at once → 6 pass, 9 rejected; later one more passes.
    // t=750: 5000 − 1500 + 1000 = 4500 → pass, then 5500 → reject.
    // t=3500: 4500 − 5500 + 1000 → 0 → 4 pass (0..3000).
    // t=3600: 3000 − 200 + 1000 = 3800, 4800 pass; 5800 reject.
    Scenario {
        name: "nodelay",
        limits: &[limit(2, 5, Mode::NoDelay)],
        batches: &[batch(0, 15), batch(750, 2), batch(3500, 4), batch(3600, 3)],
    },
    // delay=3: 0,1000,2000,3000 at once; 4000 → 500 ms; 5000 → 1000 ms; 6000 rejected.
    // t=1800: 5000 − 3600 + 1000 = 2400 at once; 3400 → 200 ms; 4400 → 700 ms.
    Scenario {
        name: "delay3",
        limits: &[limit(2, 5, Mode::Delay(3))],
        batches: &[batch(0, 7), batch(1800, 3)],
    },
    // No nodelay at 5r/s burst 3: delays 0, 200, 400, 600, then rejected.
    // t=1500: drained → 0 ms, 200 ms.
    Scenario {
        name: "delaying",
        limits: &[limit(5, 3, Mode::Delaying)],
        batches: &[batch(0, 5), batch(1500, 2)],
    },
    // Two limits: per client (1r/s burst 3) then per X-K header (1r/s burst 0). At t=0 four
    // requests share one X-K: the first passes, the header limit rejects three, and those must not
    // be charged to the client limit. At t=100 four requests with fresh X-K values: the client
    // limit, still at 0 (900, 1900, 2900 pass; 3900 rejected). Had the rejections been charged
    // (3000) all four would be rejected.
    Scenario {
        name: "multi",
        limits: &[
            limit(1, 3, Mode::NoDelay),
            Limit {
                rate_rps: 1,
                burst: 0,
                mode: Mode::NoDelay,
                key: Key::Header,
            },
        ],
        batches: &[
            batch(0, 4),
            Batch {
                at_ms: 100,
                count: 4,
                distinct_header: true,
            },
        ],
    },
    // Two limits on the same key (one store round trip for cluster zones): 1r/s burst 2 and
    // 5r/s burst 1. t=0: two pass, then the second limit rejects two, which must not be charged
    // to the first (1000 stored). t=1500: 1000 − 1500 + 1000 → 500 and 1500 pass, 2500 rejected;
    // had the rejections been charged (2000), only one would pass.
    Scenario {
        name: "multi_same_key",
        limits: &[limit(1, 2, Mode::NoDelay), limit(5, 1, Mode::NoDelay)],
        batches: &[batch(0, 4), batch(1500, 4)],
    },
];

/// The `X-K` value of request `j` of batch `i`.
fn header_value(b: &Batch, i: usize, j: usize) -> String {
    if b.distinct_header {
        format!("k-{i}-{j}")
    } else {
        "shared".to_string()
    }
}

/// What one batch gave.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchOutcome {
    passed: usize,
    rejected: usize,
    /// Delays of the passed requests in ms, ascending (measured latency over HTTP).
    delays_ms: Vec<u64>,
}

impl Limit {
    fn rule(&self, zone: &str) -> LimitReqRule {
        LimitReqRule {
            zone: zone.to_string(),
            burst: self.burst,
            nodelay: matches!(self.mode, Mode::NoDelay),
            delay: match self.mode {
                Mode::Delay(n) => n,
                _ => 0,
            },
            dry_run: false,
        }
    }

    fn zone(&self, name: &str) -> ReqZone {
        ReqZone::new(&LimitReqZone {
            name: name.to_string(),
            key: match self.key {
                Key::Ip => LimitKey::ClientIp,
                Key::Header => LimitKey::Header("x-k".to_string()),
            },
            rate: Rate {
                milli_per_sec: self.rate_rps * 1000,
            },
            max_keys: 1000,
            scope: Default::default(),
        })
    }

    fn nginx_zone(&self, zone: &str) -> String {
        let key = match self.key {
            Key::Ip => "$binary_remote_addr",
            Key::Header => "$http_x_k",
        };
        format!(
            "    limit_req_zone {key} zone={zone}:1m rate={}r/s;\n",
            self.rate_rps
        )
    }

    fn nginx_directive(&self, zone: &str) -> String {
        let mode = match self.mode {
            Mode::NoDelay => " nodelay".to_string(),
            Mode::Delay(n) => format!(" delay={n}"),
            Mode::Delaying => String::new(),
        };
        // NGINX refuses `burst=0`; leaving it out means 0.
        let burst = if self.burst == 0 {
            String::new()
        } else {
            format!(" burst={}", self.burst)
        };
        format!("limit_req zone={zone}{burst}{mode}; ")
    }

    fn gateway_zone_yaml(&self, zone: &str) -> String {
        let key = match self.key {
            Key::Ip => "client_ip",
            Key::Header => "\"header:X-K\"",
        };
        format!("  {zone}: {{ key: {key}, rate: {}r/s }}\n", self.rate_rps)
    }

    fn gateway_rule_yaml(&self, zone: &str) -> String {
        let extra = match self.mode {
            Mode::NoDelay => ", nodelay: true".to_string(),
            Mode::Delay(n) => format!(", delay: {n}"),
            Mode::Delaying => String::new(),
        };
        format!("      - {{ zone: {zone}, burst: {}{extra} }}\n", self.burst)
    }
}

impl Scenario {
    /// Zone name of limit `i`.
    fn zone_name(&self, i: usize) -> String {
        format!("{}_{i}", self.name)
    }

    /// Replays the schedule through the model on a virtual clock; `shift` moves batch `i` by
    /// `shift[i]` ms and `spread` spaces the requests of a batch.
    fn model(&self, shift: &[i64], spread: u64) -> Vec<BatchOutcome> {
        let zones: Vec<ReqZone> = self
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| l.zone(&self.zone_name(i)))
            .collect();
        let rules: Vec<LimitReqRule> = self
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| l.rule(&self.zone_name(i)))
            .collect();
        // Start well after the zone epochs so negative shifts stay on the zone clock.
        let base = Instant::now() + Duration::from_secs(1);
        self.batches
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let start = b.at_ms as i64 + shift.get(i).copied().unwrap_or(0);
                let mut out = BatchOutcome {
                    passed: 0,
                    rejected: 0,
                    delays_ms: Vec::new(),
                };
                for j in 0..b.count {
                    let at = base + Duration::from_millis(start.max(0) as u64 + j as u64 * spread);
                    let header = header_value(b, i, j);
                    let checks: Vec<ReqCheck<'_>> = self
                        .limits
                        .iter()
                        .enumerate()
                        .map(|(n, l)| ReqCheck {
                            zone: &zones[n],
                            key: match l.key {
                                Key::Ip => LimitKeyValue::Ip(1),
                                Key::Header => LimitKeyValue::Header(header.as_bytes()),
                            },
                            rule: &rules[n],
                        })
                        .collect();
                    match check(&checks, at) {
                        ReqDecision::Pass { delay, .. } => {
                            out.passed += 1;
                            out.delays_ms.push(delay.as_millis() as u64);
                        }
                        ReqDecision::Reject { .. } => out.rejected += 1,
                    }
                }
                out.delays_ms.sort_unstable();
                out
            })
            .collect()
    }
}

/// Asserts two outcome lists agree: exact counts, delays within `tolerance_ms`.
fn assert_agree(what: &str, expected: &[BatchOutcome], got: &[BatchOutcome], tolerance_ms: i64) {
    assert_eq!(expected.len(), got.len(), "{what}: batch count");
    for (i, (e, g)) in expected.iter().zip(got).enumerate() {
        assert_eq!(
            (e.passed, e.rejected),
            (g.passed, g.rejected),
            "{what}: batch {i}: (passed, rejected) differ\n expected {expected:?}\n got      {got:?}"
        );
        for (de, dg) in e.delays_ms.iter().zip(&g.delays_ms) {
            assert!(
                (*de as i64 - *dg as i64).abs() <= tolerance_ms,
                "{what}: batch {i}: delays differ beyond {tolerance_ms} ms\n expected {expected:?}\n got      {got:?}"
            );
        }
    }
}

/// The schedules must not sit near a rounding boundary: shifted and spread replays agree.
fn assert_schedule_robust(s: &Scenario) {
    let exact = s.model(&[], 0);
    let n = s.batches.len();
    for i in 0..n {
        for delta in [-ROBUSTNESS_SHIFT_MS, ROBUSTNESS_SHIFT_MS] {
            let mut shift = vec![0i64; n];
            shift[i] = delta;
            let moved = s.model(&shift, ROBUSTNESS_SPREAD_MS);
            assert_agree(
                &format!("{}: model with batch {i} moved {delta} ms", s.name),
                &exact,
                &moved,
                ROBUSTNESS_SHIFT_MS + 50,
            );
        }
    }
}

/// HTTP delays are measured relative to the fastest response of a batch, which is only sound when
/// the model serves some request of every batch at once.
fn model_batches_start_undelayed(s: &Scenario) {
    for (i, b) in s.model(&[], 0).iter().enumerate() {
        assert_eq!(
            b.delays_ms.first(),
            Some(&0),
            "{}: batch {i} has no undelayed request",
            s.name
        );
    }
}

fn find_nginx() -> PathBuf {
    if let Some(p) = std::env::var_os("NGINX") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nginx")).collect())
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/sbin/nginx"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "\n\n*** nginx not found (set $NGINX, or `apt-get install -y nginx-light`): the \
                 limit_req differential test needs the real NGINX ***\n"
            )
        })
}

/// A real NGINX serving `/<scenario>/index.html` behind each scenario's `limit_req`. Killed on drop.
struct Nginx {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    error_log: PathBuf,
}

impl Nginx {
    fn start(scenarios: &[Scenario]) -> Nginx {
        let bin = find_nginx();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let port = common::free_port();
        let mut zones = String::new();
        let mut locations = String::new();
        for s in scenarios {
            std::fs::create_dir_all(root.join("html").join(s.name)).expect("html dir");
            std::fs::write(root.join("html").join(s.name).join("index.html"), "ok\n")
                .expect("index");
            let mut directives = String::new();
            for (i, l) in s.limits.iter().enumerate() {
                zones.push_str(&l.nginx_zone(&s.zone_name(i)));
                directives.push_str(&l.nginx_directive(&s.zone_name(i)));
            }
            locations.push_str(&format!(
                "        location /{}/ {{ {directives}}}\n",
                s.name
            ));
        }
        std::fs::create_dir_all(root.join("tmp")).expect("tmp dir");
        let p = root.display();
        let conf = format!(
            "error_log {p}/error.log info;\n\
             pid {p}/nginx.pid;\n\
             worker_processes 1;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20   access_log {p}/access.log;\n\
             \x20   client_body_temp_path {p}/tmp/body;\n\
             \x20   proxy_temp_path {p}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {p}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {p}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {p}/tmp/scgi;\n\
             \x20   limit_req_status 429;\n\
             {zones}\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       root {p}/html;\n\
             {locations}\
             \x20   }}\n\
             }}\n"
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let error_log = root.join("error.log");
        let child = Command::new(&bin)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg("daemon off; master_process off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut nginx = Nginx {
            dir,
            port,
            child,
            error_log,
        };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("nginx exited at start ({status}): {err}\n{}", self.errors());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx did not listen within 10 s\n{}", self.errors());
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fires the schedule at `base_url/<scenario>/index.html` (batches at their offsets, requests of
/// a batch concurrently, each on its own connection) and measures each request.
async fn replay_http(
    s: &'static Scenario,
    base_url: String,
    check_headers: bool,
) -> Vec<BatchOutcome> {
    replay_http_round_robin(s, vec![base_url], check_headers).await
}

/// [`replay_http`] with the trace's requests sent round-robin over `base_urls` (request `k` of
/// the whole trace to `base_urls[k % n]`): several gateways sharing cluster zones.
async fn replay_http_round_robin(
    s: &'static Scenario,
    base_urls: Vec<String>,
    check_headers: bool,
) -> Vec<BatchOutcome> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let urls: Vec<String> = base_urls
        .iter()
        .map(|b| format!("{b}/{}/index.html", s.name))
        .collect();
    let url = urls.join(" | ");
    let mut k = 0usize;
    let start = tokio::time::Instant::now();
    let mut batches = Vec::new();
    for (i, b) in s.batches.iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_millis(b.at_ms)).await;
        let mut tasks = Vec::with_capacity(b.count);
        for j in 0..b.count {
            let target = &urls[k % urls.len()];
            k += 1;
            let req = client.get(target).header("x-k", header_value(b, i, j));
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let resp = req.send().await.expect("request");
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let _ = resp.bytes().await;
                (status, sent.elapsed(), retry_after)
            }));
        }
        batches.push(tasks);
    }
    let mut out = Vec::new();
    for tasks in batches {
        let mut b = BatchOutcome {
            passed: 0,
            rejected: 0,
            delays_ms: Vec::new(),
        };
        for t in tasks {
            let (status, took, retry_after) = t.await.expect("request task");
            match status {
                200 => {
                    b.passed += 1;
                    b.delays_ms.push(took.as_millis() as u64);
                }
                429 => {
                    b.rejected += 1;
                    if check_headers {
                        assert!(
                            retry_after.is_some_and(|s| s >= 1),
                            "{}: 429 without Retry-After ≥ 1 ({retry_after:?})",
                            s.name
                        );
                    }
                }
                other => panic!("{}: unexpected status {other} from {url}", s.name),
            }
        }
        b.delays_ms.sort_unstable();
        // Requests of a batch leave together, so the fastest one measures connection set-up and
        // serving; delays are compared relative to it (every schedule's batches start with a
        // request the model serves at once, see `model_batches_start_undelayed`).
        if let Some(&fastest) = b.delays_ms.first() {
            assert!(
                fastest < MAX_SERVING_MS,
                "{}: fastest response took {fastest} ms",
                s.name
            );
            b.delays_ms.iter_mut().for_each(|d| *d -= fastest);
        }
        out.push(b);
    }
    out
}

fn gateway_yaml(upstream: std::net::SocketAddr) -> String {
    gateway_yaml_with(upstream, None)
}

/// The gateway config; with `store`, every zone is `scope: cluster` on that `limit_store`.
fn gateway_yaml_with(upstream: std::net::SocketAddr, store: Option<&[String]>) -> String {
    let mut y = String::from("limit_req_status: 429\n");
    if let Some(urls) = store {
        // A generous timeout: debug builds on a loaded machine; the store must decide every
        // request of the trace (the test checks that none fell back).
        y.push_str(&format!(
            "limit_store:\n  redis: [{}]\n  timeout_ms: 500\n",
            urls.iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    y.push_str("limit_req_zones:\n");
    for s in SCENARIOS {
        for (i, l) in s.limits.iter().enumerate() {
            let mut z = l.gateway_zone_yaml(&s.zone_name(i));
            if store.is_some() {
                z = z.replace(" }\n", ", scope: cluster }\n");
            }
            y.push_str(&z);
        }
    }
    y.push_str(&format!(
        "upstreams:\n  u:\n    servers: [\"{upstream}\"]\n    max_inflight: 200\nroutes:\n"
    ));
    for s in SCENARIOS {
        y.push_str(&format!(
            "  - path_prefix: /{}/\n    upstream: u\n    limit_req:\n",
            s.name
        ));
        for (i, l) in s.limits.iter().enumerate() {
            y.push_str(&l.gateway_rule_yaml(&s.zone_name(i)));
        }
    }
    y
}

fn dump(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_req_matches_real_nginx() {
    for s in SCENARIOS {
        assert_schedule_robust(s);
        model_batches_start_undelayed(s);
    }
    let nginx = Nginx::start(SCENARIOS);
    let upstream = common::TestUpstream::start("diff").await;
    let gw = common::GatewayProcess::start(&gateway_yaml(upstream.addr)).await;

    // Every scenario through NGINX and the gateway at the same time (distinct zones and keys
    // per scenario, so runs do not interact).
    let nginx_url = format!("http://127.0.0.1:{}", nginx.port);
    let gw_url = gw.url("");
    let mut runs = Vec::new();
    for s in SCENARIOS {
        runs.push((
            s,
            tokio::spawn(replay_http(s, nginx_url.clone(), false)),
            tokio::spawn(replay_http(s, gw_url.clone(), true)),
        ));
    }
    for (s, n, g) in runs {
        let from_nginx = n.await.expect("nginx run");
        let from_gateway = g.await.expect("gateway run");
        let model = s.model(&[], 0);
        println!("{}: model   {model:?}", s.name);
        println!("{}: nginx   {from_nginx:?}", s.name);
        println!("{}: gateway {from_gateway:?}", s.name);
        assert_agree(
            &format!("{}: model vs nginx\n{}", s.name, nginx.errors()),
            &model,
            &from_nginx,
            DELAY_TOLERANCE_MS,
        );
        assert_agree(
            &format!("{}: gateway vs nginx\n{}", s.name, gw.logs()),
            &from_nginx,
            &from_gateway,
            DELAY_TOLERANCE_MS,
        );
    }
    // NGINX logged its decisions; make sure it really limited (and did not, say, serve 404s).
    let access = dump(&nginx.dir.path().join("access.log"));
    assert!(
        access.contains(" 429 "),
        "nginx access log has no 429:\n{access}"
    );
}

/// The cluster tests start several processes each; one at a time keeps the timing honest on a
/// small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three gateways sharing `scope: cluster` zones on the store at `urls`: every scenario's trace,
/// sent round-robin over the three, must give NGINX's accept/reject sequence (SPEC §10.1).
///
/// `skip`: scenarios left out (on Redis Cluster, zones with different keys live in different
/// slots and are decided one after the other, so "multi" is not exact there).
async fn three_gateways_match_nginx(urls: Vec<String>, skip: &[&str]) {
    let nginx = Nginx::start(SCENARIOS);
    let upstream = common::TestUpstream::start("diff").await;
    let yaml = gateway_yaml_with(upstream.addr, Some(&urls));
    let gws = [
        common::GatewayProcess::start(&yaml).await,
        common::GatewayProcess::start(&yaml).await,
        common::GatewayProcess::start(&yaml).await,
    ];
    // Connected and heartbeating: every gateway sees the three.
    for gw in &gws {
        assert_eq!(
            gw.wait_metric("gateway_cluster_gateways", 3.0).await,
            Some(3.0),
            "{}",
            gw.logs()
        );
    }
    let nginx_url = format!("http://127.0.0.1:{}", nginx.port);
    let gw_urls: Vec<String> = gws.iter().map(|g| g.url("")).collect();
    let mut runs = Vec::new();
    for s in SCENARIOS.iter().filter(|s| !skip.contains(&s.name)) {
        runs.push((
            s,
            tokio::spawn(replay_http(s, nginx_url.clone(), false)),
            tokio::spawn(replay_http_round_robin(s, gw_urls.clone(), true)),
        ));
    }
    let logs = || {
        gws.iter()
            .map(|g| g.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    for (s, n, g) in runs {
        let from_nginx = n.await.expect("nginx run");
        let from_gateways = g.await.expect("gateway run");
        println!("{}: nginx        {from_nginx:?}", s.name);
        println!("{}: 3 gateways   {from_gateways:?}", s.name);
        assert_agree(
            &format!("{}: model vs nginx\n{}", s.name, nginx.errors()),
            &s.model(&[], 0),
            &from_nginx,
            DELAY_TOLERANCE_MS,
        );
        assert_agree(
            &format!("{}: three cluster gateways vs nginx\n{}", s.name, logs()),
            &from_nginx,
            &from_gateways,
            DELAY_TOLERANCE_MS,
        );
    }
    // Every decision was the store's: no error, no timeout, no fallback.
    let mut ok = 0.0;
    for gw in &gws {
        let m = gw.metrics().await;
        for r in ["error", "timeout"] {
            let v = common::metric_value(
                &m,
                &format!("gateway_limit_store_requests_total{{result=\"{r}\"}}"),
            );
            assert_eq!(v, Some(0.0), "{r}: {}", gw.logs());
        }
        ok += common::metric_value(&m, "gateway_limit_store_requests_total{result=\"ok\"}")
            .unwrap_or(0.0);
        assert!(
            !gw.logs().contains("limit_scope=\"fallback\""),
            "a decision fell back:\n{}",
            gw.logs()
        );
    }
    let requests: usize = SCENARIOS
        .iter()
        .filter(|s| !skip.contains(&s.name))
        .map(|s| s.batches.iter().map(|b| b.count).sum::<usize>())
        .sum();
    assert!(
        ok >= requests as f64,
        "{ok} store decisions for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_limit_req_on_one_redis_matches_real_nginx() {
    let _serial = SERIAL.lock().await;
    let redis = redis_support::RedisServer::start(common::free_port());
    three_gateways_match_nginx(vec![redis.url()], &[]).await;
    // At most one round trip per request, whatever the route's number of zones: one EVALSHA
    // each, fewer when simultaneous requests went in one call (plus at most one NOSCRIPT miss per
    // gateway before the script is loaded; heartbeats use EVAL).
    let calls = redis.command_calls("evalsha");
    let requests: u64 = SCENARIOS
        .iter()
        .map(|s| s.batches.iter().map(|b| b.count as u64).sum::<u64>())
        .sum();
    println!("{calls} EVALSHA for {requests} requests");
    assert!(
        (1..=requests + 3).contains(&calls),
        "{calls} EVALSHA for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_limit_req_on_redis_cluster_matches_real_nginx() {
    let _serial = SERIAL.lock().await;
    let ports = [(); 6].map(|_| common::free_port());
    let cluster = redis_support::RedisCluster::start(ports);
    three_gateways_match_nginx(cluster.urls(), &["multi"]).await;
}
