//! Configuration parsing and validation (SPEC §7), and `gateway -t` (SPEC §3).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use gateway::config::{self, LimitKey, Rate};

const MINIMAL: &str = "listen: \"127.0.0.1:8080\"
upstreams:
  u: { servers: [\"127.0.0.1:3001\"] }
routes:
  - { path_prefix: /, upstream: u }
";

fn conf_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

/// The problems of `yaml`, as `path: message` lines.
fn problems(yaml: &str) -> Vec<String> {
    match config::parse(yaml, "test.yaml") {
        Ok(_) => Vec::new(),
        Err(e) => e.lines(),
    }
}

fn assert_problem(yaml: &str, expected: &str) {
    let p = problems(yaml);
    assert!(
        p.iter().any(|l| l.starts_with(expected)),
        "expected a line starting with {expected:?}, got {p:#?}"
    );
}

#[test]
fn shipped_config_files_are_valid() {
    for name in ["gateway.yaml", "gateway.local.yaml"] {
        let cfg = config::load(conf_dir().join(name)).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert_eq!(cfg.server.threads, 2);
        assert_eq!(cfg.server.grace_period_seconds, 1);
        assert_eq!(
            cfg.limit_req_zones["per_ip"].rate,
            Rate {
                milli_per_sec: 1666
            }
        );
        assert_eq!(
            cfg.limit_req_zones["reservations"].rate,
            Rate {
                milli_per_sec: 2000
            }
        );
        assert_eq!(cfg.routes[0].path_prefix, "/api/reservations");
        assert_eq!(cfg.routes[0].timeout, Duration::from_millis(17000));
        assert_eq!(cfg.upstreams["reservations"].servers.len(), 2);
        assert_eq!(cfg.source.sha256.len(), 64);
    }
    let local = config::load(conf_dir().join("gateway.local.yaml")).unwrap();
    assert_eq!(local.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(local.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(
        local.upstreams["reservations"].servers[1].to_string(),
        "127.0.0.1:3011"
    );
}

#[test]
fn minimal_file_gets_every_default() {
    let cfg = config::parse(MINIMAL, "m.yaml").unwrap();
    assert_eq!(cfg.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(cfg.server.threads, 2);
    assert_eq!(cfg.server.graceful_shutdown_timeout_seconds, 5);
    assert_eq!(cfg.client.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.client.max_body_bytes, 65536);
    assert!(cfg.client.trusted_proxies.is_empty());
    assert_eq!(cfg.client.max_connections, None);
    assert_eq!((cfg.limit_req_status, cfg.limit_conn_status), (429, 429));
    let u = &cfg.upstreams["u"];
    assert_eq!(u.max_inflight, 50);
    assert_eq!(u.connect_timeout, Duration::from_millis(500));
    assert_eq!(u.read_timeout, Duration::from_millis(16000));
    assert_eq!(u.retries, 1);
    assert_eq!(u.health_check.path, "/health");
    assert_eq!((u.health_check.rise, u.health_check.fall), (2, 2));
    assert_eq!(u.outlier.consecutive_failures, 3);
    assert_eq!(u.outlier.max_ejection_percent, 50);
    assert_eq!(u.circuit_breaker.failure_rate, 0.5);
    assert_eq!(u.circuit_breaker.min_requests, 20);
    assert_eq!(u.failure_statuses, vec![500, 502, 504]);
    assert_eq!(cfg.routes[0].timeout, Duration::from_secs(30));
}

#[test]
fn keys_and_rates_parse() {
    let cfg = config::parse(
        "listen: \"127.0.0.1:1\"
client: { trusted_proxies: [\"10.0.0.0/8\", \"192.168.1.1\", \"::1\"] }
limit_req_zones:
  a: { key: \"header:X-Api-Key\", rate: 30r/m }
  b: { key: global, rate: 5r/s, max_keys: 10 }
upstreams:
  u: { servers: [\"[::1]:3001\", \"backend.internal:80\"] }
routes:
  - { path_prefix: /, upstream: u }
  - { path_prefix: /api/long/, upstream: u }
",
        "k.yaml",
    )
    .unwrap();
    assert_eq!(
        cfg.limit_req_zones["a"].key,
        LimitKey::Header("x-api-key".into())
    );
    assert_eq!(cfg.limit_req_zones["a"].rate, Rate { milli_per_sec: 500 });
    assert_eq!(cfg.limit_req_zones["b"].key, LimitKey::Global);
    assert_eq!(cfg.client.trusted_proxies.len(), 3);
    assert_eq!(cfg.upstreams["u"].servers[0].host, "::1");
    // Longest prefix first.
    assert_eq!(cfg.routes[0].path_prefix, "/api/long/");
}

#[test]
fn required_keys_are_reported() {
    let p = problems("upstreams:\n  u: {}\nroutes:\n  - {}\n");
    for expected in [
        "listen: required key is missing",
        "upstreams.u.servers: required key is missing",
        "routes[0].path_prefix: required key is missing",
        "routes[0].upstream: required key is missing",
    ] {
        assert!(
            p.iter().any(|l| l == expected),
            "{expected:?} not in {p:#?}"
        );
    }
}

#[test]
fn every_problem_names_its_key_path() {
    let cases: &[(&str, &str)] = &[
        ("bogus: 1", "bogus: unknown key"),
        (
            "server: { threads: 0 }",
            "server.threads: must be between 1 and",
        ),
        ("server: { thread: 2 }", "server.thread: unknown key"),
        ("listen: \"nope\"", "listen: expected \"<ip>:<port>\""),
        (
            "client: { header_timeout_ms: 0 }",
            "client.header_timeout_ms: must be between 1 and",
        ),
        (
            "server: { work_stealing: 1 }",
            "server.work_stealing: expected",
        ),
        (
            "server: { upstream_keepalive_pool_size: 0 }",
            "server.upstream_keepalive_pool_size: must be between 1 and",
        ),
        (
            "server: { fast_timeout_to_tokio_threshold_seconds: -1 }",
            "server.fast_timeout_to_tokio_threshold_seconds: must be at least 0",
        ),
        (
            "server: { fast_timeout_to_tokio_threshold_seconds: 86401 }",
            "server.fast_timeout_to_tokio_threshold_seconds: must be between 0 and 86400",
        ),
        (
            "client: { keepalive_requests: 0 }",
            "client.keepalive_requests: must be between 1 and",
        ),
        (
            "client: { max_connections: 0 }",
            "client.max_connections: must be between 1 and",
        ),
        (
            "client: { max_connections: lots }",
            "client.max_connections: expected an integer",
        ),
        (
            "client: { trusted_proxies: [\"10.0.0.0/40\"] }",
            "client.trusted_proxies[0]: expected a CIDR",
        ),
        (
            "limit_req_status: 200",
            "limit_req_status: must be between 400 and 599",
        ),
        (
            "limit_conn_status: 600",
            "limit_conn_status: must be between 400 and 599",
        ),
        (
            "limit_req_zones:\n  per_ip: { rate: fast }",
            "limit_req_zones.per_ip.rate: expected \"<N>r/s\" or \"<N>r/m\"",
        ),
        (
            "limit_req_zones:\n  z: { rate: 0r/s }",
            "limit_req_zones.z.rate: expected",
        ),
        (
            "limit_req_zones:\n  z: { rate: 1r/s, key: ip }",
            "limit_req_zones.z.key: expected client_ip, global or header:<Name>",
        ),
        (
            "limit_conn_zones:\n  c: { key: client_ip, burst: 1 }",
            "limit_conn_zones.c.burst: unknown key",
        ),
        (
            "upstreams:\n  v: { servers: [] }",
            "upstreams.v.servers: at least one server is required",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\", \"b\"] }",
            "upstreams.v.servers[1]: expected \"<host>:<port>\"",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\", \"a:1\"] }",
            "upstreams.v.servers[1]: duplicate server",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], connect_timeout_ms: 0 }",
            "upstreams.v.connect_timeout_ms: must be between 1 and",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], queue: 5 }",
            "upstreams.v.queue_timeout_ms: must be > 0 when queue > 0",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], keepalive_idle_timeout_ms: 0 }",
            "upstreams.v.keepalive_idle_timeout_ms: must be between 1 and",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], tcp_keepalive: { idle_ms: 5000, count: 3 } }",
            "upstreams.v.tcp_keepalive.interval_ms: ",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], tcp_keepalive: { idle_ms: 500, interval_ms: 1000, count: 3 } }",
            "upstreams.v.tcp_keepalive.idle_ms: must be between 1000 and",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], tcp_keepalive: { idle_ms: 5000, interval_ms: 1000, count: 0 } }",
            "upstreams.v.tcp_keepalive.count: must be between 1 and 127",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], tcp_keepalive: { idle_ms: 5000, interval_ms: 1000, count: 3, probes: 1 } }",
            "upstreams.v.tcp_keepalive.probes: unknown key",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], max_inflight: 0 }",
            "upstreams.v.max_inflight: must be between 1 and",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], outlier: { max_ejection_percent: 101 } }",
            "upstreams.v.outlier.max_ejection_percent: must be between 0 and 100",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], circuit_breaker: { failure_rate: 0 } }",
            "upstreams.v.circuit_breaker.failure_rate: must be in (0, 1]",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], circuit_breaker: { failure_rate: 1.5 } }",
            "upstreams.v.circuit_breaker.failure_rate: must be in (0, 1]",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], health_check: { path: health } }",
            "upstreams.v.health_check.path: must start with '/'",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], health_check: { rise: 0 } }",
            "upstreams.v.health_check.rise: must be between 1 and",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], failure_statuses: [503, 200] }",
            "upstreams.v.failure_statuses[1]: expected a status code in 400..=599",
        ),
        (
            "upstreams:\n  v: { servers: [\"a:1\"], retries: -1 }",
            "upstreams.v.retries: must be at least 0",
        ),
    ];
    for (snippet, expected) in cases {
        let yaml = format!("{MINIMAL}{snippet}\n");
        // A snippet may repeat a top-level key of MINIMAL; put it first then (last wins is not YAML).
        let yaml = if snippet.starts_with("upstreams:") || snippet.starts_with("listen:") {
            merge(snippet)
        } else {
            yaml
        };
        assert_problem(&yaml, expected);
    }
}

/// MINIMAL with `snippet`'s top-level key replacing or extending MINIMAL's.
fn merge(snippet: &str) -> String {
    if let Some(rest) = snippet.strip_prefix("upstreams:\n") {
        format!(
            "listen: \"127.0.0.1:8080\"\nupstreams:\n  u: {{ servers: [\"127.0.0.1:3001\"] }}\n{rest}\nroutes:\n  - {{ path_prefix: /, upstream: u }}\n"
        )
    } else {
        format!("{snippet}\nupstreams:\n  u: {{ servers: [\"127.0.0.1:3001\"] }}\nroutes:\n  - {{ path_prefix: /, upstream: u }}\n")
    }
}

#[test]
fn route_problems_are_all_collected() {
    let yaml = "listen: \"127.0.0.1:1\"
limit_req_zones:
  per_ip: { rate: 10r/s }
limit_conn_zones:
  c: {}
upstreams:
  u: { servers: [\"127.0.0.1:3001\"] }
routes:
  - path_prefix: /api
    upstream: u
    limit_req:
      - { zone: per_ip, burst: 5 }
      - { zone: foo }
    limit_conn:
      - { zone: bar, max: 1 }
      - { zone: c, max: 0 }
  - { path_prefix: api, upstream: nope, timeout_ms: 0 }
  - { path_prefix: /api, upstream: u }
  - { path_prefix: /x, upstream: u, limit_req: [{ zone: per_ip, nodelay: yes }] }
";
    let p = problems(yaml);
    for expected in [
        "routes[0].limit_req[1].zone: unknown zone \"foo\"",
        "routes[0].limit_conn[0].zone: unknown zone \"bar\"",
        "routes[0].limit_conn[1].max: must be between 1 and",
        "routes[1].path_prefix: must start with '/', got \"api\"",
        "routes[1].upstream: unknown upstream \"nope\"",
        "routes[1].timeout_ms: must be between 1 and",
        "routes[2].path_prefix: duplicate path_prefix \"/api\" (also in routes[0])",
        "routes[3].limit_req[0].nodelay: expected true or false",
    ] {
        assert!(
            p.iter().any(|l| l.starts_with(expected)),
            "{expected:?} not in {p:#?}"
        );
    }
    assert_eq!(p.len(), 8, "{p:#?}");
}

#[test]
fn listen_and_admin_must_differ_and_yaml_errors_are_reported() {
    assert_problem(
        &format!("admin_listen: \"127.0.0.1:8080\"\n{MINIMAL}"),
        "admin_listen: must differ from listen",
    );
    let p = problems("listen: [\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("invalid YAML"), "{p:?}");
}

#[test]
fn test_flag_on_good_and_bad_files() {
    let path = conf_dir().join("gateway.yaml");
    let (code, out, err) = common::config_test_file(&path);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("configuration file {} test is successful", path.display())
    );

    let (code, out, err) = common::config_test(
        "listen: \"127.0.0.1:1\"
upstreams:
  reservations: { servers: [\"a:1\", \"b\"] }
routes:
  - path_prefix: /
    upstream: reservations
    limit_req: [{ zone: foo }]
",
    );
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            "upstreams.reservations.servers[1]: expected \"<host>:<port>\", got \"b\"",
            "routes[0].limit_req[0].zone: unknown zone \"foo\"",
        ]
    );

    let (code, _, err) = common::config_test_file(std::path::Path::new("/nonexistent/gw.yaml"));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent/gw.yaml"), "{err}");
}

// ---- Size, nesting and alias limits ("Hostile clients", item 5) ----

/// `gateway -t` on `text`: (exit code, stderr, time taken).
fn timed_config_test(text: &str) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hostile.yaml");
    std::fs::write(&path, text).expect("write config");
    let t = std::time::Instant::now();
    let (code, _, err) = common::config_test_file(&path);
    (code, err, t.elapsed())
}

/// Refused by `gateway -t` with exit 1, one line containing `expected`, within `max` (process
/// start included; debug build).
fn assert_refused_within(name: &str, text: &str, expected: &str, max: Duration) {
    let (code, err, took) = timed_config_test(text);
    eprintln!("{name}: {} bytes refused in {took:?}", text.len());
    assert_eq!(code, 1, "{name}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: one line per problem: {err}");
    assert!(lines[0].contains(expected), "{name}: {err}");
    assert!(took < max, "{name}: took {took:?} (process start included)");
}

/// Refused well under a second: the cheap pre-checks (size, nesting).
fn assert_refused_fast(name: &str, text: &str, expected: &str) {
    assert_refused_within(name, text, expected, Duration::from_millis(900));
}

/// The classic: ten anchors, each nine aliases of the previous (9^9 strings).
fn billion_laughs() -> String {
    let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 9].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

/// Wide fan-out: 100 strings, 100 aliases of those, 100 aliases of those (a million values from
/// 2 KB; `serde_norway`'s alias-jump limit alone would allow it).
fn wide_alias_bomb() -> String {
    let mut s = format!("a0: &a0 [{}]\n", vec!["lol"; 100].join(", "));
    for i in 1..3 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 100].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

#[test]
fn hostile_files_are_refused_fast_by_test_flag() {
    let n = 100_000;
    assert_refused_fast(
        "100,000 nested [",
        &format!("listen: {}{}\n", "[".repeat(n), "]".repeat(n)),
        "line 1, column 72: nested deeper than 64 levels",
    );
    assert_refused_fast(
        "100,000 unclosed [",
        &"[".repeat(n),
        "nested deeper than 64 levels",
    );
    // libyaml also ends lines at a lone CR (and NEL, LS, PS): no comment hides the brackets.
    assert_refused_fast(
        "comment, CR, 100,000 nested [",
        &format!("# x\r{}{}: 1\n", "[".repeat(n), "]".repeat(n)),
        "line 2, column 65: nested deeper than 64 levels",
    );
    assert_refused_fast(
        "100,000 nested {a: ",
        &"{a: ".repeat(n),
        "nested deeper than 64 levels",
    );
    assert_refused_fast(
        "100,000 nested - ",
        &format!("{}x\n", "- ".repeat(n)),
        "nested deeper than 64 levels",
    );
    let mut indented = String::new();
    for i in 0..1000 {
        indented.push_str(&" ".repeat(i));
        indented.push_str("k:\n");
    }
    assert_refused_fast(
        "1,000 indented keys",
        &indented,
        "line 65, column 65: nested deeper than 64 levels",
    );
    let big = format!("{MINIMAL}{}", "# padding padding padding\n".repeat(50_000));
    assert_refused_fast(
        "1.3 MB file",
        &big,
        &format!(
            "hostile.yaml is larger than the limit of 1048576 bytes ({} bytes); not parsed",
            big.len()
        ),
    );
    // Alias bombs are refused after building MAX_NODES values: about as long as an ordinary
    // 100,000-value file takes (~0.5 s in a debug build, a tenth of that in release).
    let alias_max = Duration::from_secs(3);
    assert_refused_within(
        "wide alias bomb",
        &wide_alias_bomb(),
        "the document expands to more than 100000 YAML values (anchors and aliases?)",
        alias_max,
    );
    // The classic trips serde_norway's own alias-jump limit or ours, whichever comes first.
    let (code, err, took) = timed_config_test(&billion_laughs());
    eprintln!("billion laughs: refused in {took:?}: {err}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("more than 100000 YAML values") || err.contains("repetition limit exceeded"),
        "{err}"
    );
    assert!(took < alias_max, "{took:?}");
}

#[test]
fn limits_are_checked_by_parse_too() {
    // The same checks apply to `config::parse` (the path SIGHUP and the fuzz target take).
    let deep = "[".repeat(100_000);
    let t = std::time::Instant::now();
    let p = problems(&deep);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("nested deeper than 64"), "{p:?}");
    let p = problems(&wide_alias_bomb());
    assert!(p[0].contains("more than 100000 YAML values"), "{p:?}");
    let p = problems(&"#".repeat(config::MAX_CONFIG_BYTES + 1));
    assert!(
        p[0].starts_with("the configuration is larger than the limit"),
        "{p:?}"
    );
    // Just under the depth limit is parsed (and then refused for what it is).
    let p = problems(&format!("listen: {}{}\n", "[".repeat(63), "]".repeat(63)));
    assert!(p.iter().all(|l| !l.contains("nested")), "{p:?}");
    // Ordinary duplicate keys are still reported as invalid YAML.
    let p = problems(&format!("{MINIMAL}listen: \"127.0.0.1:2\"\n"));
    assert!(
        p[0].starts_with("invalid YAML: duplicate entry with key \"listen\""),
        "{p:?}"
    );
}

#[test]
fn ordinary_yaml_features_still_parse() {
    // Anchors and aliases, block scalars, quotes with brackets, comments, flow and block style.
    let cfg = config::parse(
        "# a comment with [[[[ and {{{{
listen: '127.0.0.1:8080'   # trailing [comment
admin_listen: \"127.0.0.1:9901\"
client:
  trusted_proxies:
    - 10.0.0.0/8
    - \"192.168.0.0/16\"
limit_req_zones:
  per_ip: &zone { key: client_ip, rate: 10r/s }
  other: *zone
upstreams:
  a:
    servers: &servers [\"127.0.0.1:3001\", \"127.0.0.1:3011\"]
    health_check: { path: \"/health?x=[1]\", interval_ms: 500 }
  b:
    servers: *servers
routes:
  - path_prefix: /api/a
    upstream: a
    limit_req:
      - zone: per_ip
        burst: 5
  - { path_prefix: '/api/b[it''s]', upstream: b, limit_req: [ { zone: other } ] }
",
        "ordinary.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.upstreams["b"].servers.len(), 2);
    assert_eq!(
        cfg.limit_req_zones["other"].rate,
        Rate {
            milli_per_sec: 10_000
        }
    );
    assert_eq!(cfg.upstreams["a"].health_check.path, "/health?x=[1]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_deeply_nested_file_is_refused_at_once() {
    let up = common::TestUpstream::start("a").await;
    let good = common::simple_config(&[up.addr]);
    let gw = common::GatewayProcess::start(&good).await;
    let sha = gw.status().await["config"]["sha256"].clone();

    // 100,000 nested `[` used to take 35 s in the parser and hold up later reloads.
    gw.write_config(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)));
    let t = std::time::Instant::now();
    gw.sighup();
    assert!(
        gw.wait_status(Duration::from_secs(5), |s| s["config"]["lastReload"]
            ["result"]
            == "error")
            .await,
        "reload not refused:\n{}",
        gw.logs()
    );
    let took = t.elapsed();
    eprintln!("deep file: reload refused {took:?} after SIGHUP (status polled every 50 ms)");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let st = gw.status().await;
    assert_eq!(st["config"]["sha256"], sha, "the old config stays");
    let err = st["config"]["lastReload"]["error"].as_str().unwrap();
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
    let c = common::client();
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);

    // The next reload is handled at once.
    gw.write_config(&format!("{good}# changed\n"));
    let t = std::time::Instant::now();
    gw.sighup();
    assert!(
        gw.wait_status(Duration::from_secs(5), |s| s["config"]["lastReload"]
            ["result"]
            == "ok")
            .await,
        "valid reload not applied:\n{}",
        gw.logs()
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_ne!(gw.status().await["config"]["sha256"], sha);
}
