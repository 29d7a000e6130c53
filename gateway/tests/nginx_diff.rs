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

/// One zone + location + schedule.
struct Scenario {
    name: &'static str,
    /// Requests per second.
    rate_rps: u64,
    burst: u64,
    mode: Mode,
    /// (offset from start in ms, simultaneous requests).
    batches: &'static [(u64, usize)],
}

const SCENARIOS: &[Scenario] = &[
    // SPEC §7: 15 at once → 6 pass, 9 rejected; later one more passes.
    // t=750: 5000 − 1500 + 1000 = 4500 → pass, then 5500 → reject.
    // t=3500: 4500 − 5500 + 1000 → 0 → 4 pass (0..3000).
    // t=3600: 3000 − 200 + 1000 = 3800, 4800 pass; 5800 reject.
    Scenario {
        name: "nodelay",
        rate_rps: 2,
        burst: 5,
        mode: Mode::NoDelay,
        batches: &[(0, 15), (750, 2), (3500, 4), (3600, 3)],
    },
    // delay=3: 0,1000,2000,3000 at once; 4000 → 500 ms; 5000 → 1000 ms; 6000 rejected.
    // t=1800: 5000 − 3600 + 1000 = 2400 at once; 3400 → 200 ms; 4400 → 700 ms.
    Scenario {
        name: "delay3",
        rate_rps: 2,
        burst: 5,
        mode: Mode::Delay(3),
        batches: &[(0, 7), (1800, 3)],
    },
    // No nodelay at 5r/s burst 3: delays 0, 200, 400, 600, then rejected.
    // t=1500: drained → 0 ms, 200 ms.
    Scenario {
        name: "delaying",
        rate_rps: 5,
        burst: 3,
        mode: Mode::Delaying,
        batches: &[(0, 5), (1500, 2)],
    },
];

/// What one batch gave.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchOutcome {
    passed: usize,
    rejected: usize,
    /// Delays of the passed requests in ms, ascending (measured latency over HTTP).
    delays_ms: Vec<u64>,
}

impl Scenario {
    fn rule(&self) -> LimitReqRule {
        LimitReqRule {
            zone: self.name.to_string(),
            burst: self.burst,
            nodelay: matches!(self.mode, Mode::NoDelay),
            delay: match self.mode {
                Mode::Delay(n) => n,
                _ => 0,
            },
            dry_run: false,
        }
    }

    fn zone(&self) -> ReqZone {
        ReqZone::new(&LimitReqZone {
            name: self.name.to_string(),
            key: LimitKey::ClientIp,
            rate: Rate {
                milli_per_sec: self.rate_rps * 1000,
            },
            max_keys: 1000,
        })
    }

    fn nginx_directive(&self) -> String {
        let extra = match self.mode {
            Mode::NoDelay => " nodelay".to_string(),
            Mode::Delay(n) => format!(" delay={n}"),
            Mode::Delaying => String::new(),
        };
        format!(
            "limit_req zone={} burst={}{};",
            self.name, self.burst, extra
        )
    }

    fn gateway_rule_yaml(&self) -> String {
        let extra = match self.mode {
            Mode::NoDelay => ", nodelay: true".to_string(),
            Mode::Delay(n) => format!(", delay: {n}"),
            Mode::Delaying => String::new(),
        };
        format!("{{ zone: {}, burst: {}{} }}", self.name, self.burst, extra)
    }

    /// Replays the schedule through the model on a virtual clock; `shift` moves batch `i` by
    /// `shift[i]` ms and `spread` spaces the requests of a batch.
    fn model(&self, shift: &[i64], spread: u64) -> Vec<BatchOutcome> {
        let zone = self.zone();
        let rule = self.rule();
        let key = LimitKeyValue::Ip(1);
        // Start well after the zone epoch so negative shifts stay on the zone clock.
        let base = Instant::now() + Duration::from_secs(1);
        self.batches
            .iter()
            .enumerate()
            .map(|(i, &(offset, count))| {
                let start = offset as i64 + shift.get(i).copied().unwrap_or(0);
                let mut out = BatchOutcome {
                    passed: 0,
                    rejected: 0,
                    delays_ms: Vec::new(),
                };
                for j in 0..count {
                    let at = base + Duration::from_millis(start.max(0) as u64 + j as u64 * spread);
                    match check(
                        &[ReqCheck {
                            zone: &zone,
                            key,
                            rule: &rule,
                        }],
                        at,
                    ) {
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
            zones.push_str(&format!(
                "    limit_req_zone $binary_remote_addr zone={}:1m rate={}r/s;\n",
                s.name, s.rate_rps
            ));
            locations.push_str(&format!(
                "        location /{}/ {{ {} }}\n",
                s.name,
                s.nginx_directive()
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
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let url = format!("{base_url}/{}/index.html", s.name);
    let start = tokio::time::Instant::now();
    let mut batches = Vec::new();
    for &(offset, count) in s.batches {
        tokio::time::sleep_until(start + Duration::from_millis(offset)).await;
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let resp = client.get(&url).send().await.expect("request");
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
    let mut y = String::from("limit_req_status: 429\nlimit_req_zones:\n");
    for s in SCENARIOS {
        y.push_str(&format!(
            "  {}: {{ key: client_ip, rate: {}r/s }}\n",
            s.name, s.rate_rps
        ));
    }
    y.push_str(&format!(
        "upstreams:\n  u:\n    servers: [\"{upstream}\"]\n    max_inflight: 200\nroutes:\n"
    ));
    for s in SCENARIOS {
        y.push_str(&format!(
            "  - path_prefix: /{}/\n    upstream: u\n    limit_req:\n      - {}\n",
            s.name,
            s.gateway_rule_yaml()
        ));
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
