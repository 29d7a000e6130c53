//! Configuration of cluster-wide limits (SPEC §10.1): `limit_store` and `scope`, validated like the
//! rest of the file (every wrong key names its path, `gateway -t` exits 1), and the shipped example.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use gateway::config::{self, Scope, StoreFallback};

const REST: &str = "upstreams:
  u: { servers: [\"127.0.0.1:3001\"] }
routes:
  - path_prefix: /
    upstream: u
    limit_req: [{ zone: z, burst: 5, nodelay: true }]
";

fn file(store: &str, zone: &str) -> String {
    format!("listen: \"127.0.0.1:8080\"\n{store}limit_req_zones:\n  z: {zone}\n{REST}")
}

const GOOD_STORE: &str =
    "limit_store:\n  redis: [\"redis://127.0.0.1:6379\"]\n  timeout_ms: 25\n  fallback: local\n";
const GOOD_ZONE: &str = "{ key: client_ip, rate: 2r/s, scope: cluster }";

#[test]
fn shipped_cluster_example_is_valid() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf/gateway.cluster-limits.yaml");
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let store = cfg.limit_store.as_ref().expect("limit_store");
    assert!(store.is_cluster());
    assert_eq!(store.timeout, Duration::from_millis(25));
    assert_eq!(cfg.limit_req_zones["per_ip"].scope, Scope::Cluster);
    assert_eq!(cfg.limit_req_zones["local_only"].scope, Scope::Local);
    let (code, out, err) = common::config_test_file(&path);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn defaults_and_good_values() {
    let cfg = config::parse(&file(GOOD_STORE, GOOD_ZONE), "t").expect("valid");
    let s = cfg.limit_store.expect("store");
    assert_eq!(s.redis, vec!["redis://127.0.0.1:6379".to_string()]);
    assert!(!s.is_cluster());
    assert_eq!(s.fallback, StoreFallback::Local);
    assert_eq!(cfg.limit_req_zones["z"].scope, Scope::Cluster);
    // Defaults: timeout 25 ms, fallback local, scope local; no store needed without cluster zones.
    let cfg = config::parse(
        &file(
            "limit_store: { redis: [\"redis://a:1\", \"redis://b:2\"] }\n",
            "{ rate: 1r/s }",
        ),
        "t",
    )
    .expect("valid");
    let s = cfg.limit_store.expect("store");
    assert!(s.is_cluster());
    assert_eq!(s.timeout, Duration::from_millis(25));
    assert_eq!(cfg.limit_req_zones["z"].scope, Scope::Local);
    let cfg = config::parse(&file("", "{ rate: 1r/s, scope: local }"), "t").expect("valid");
    assert!(cfg.limit_store.is_none());
}

/// Every new key wrong in turn: `gateway -t` exits 1 and names the key path.
#[test]
fn every_new_key_wrong_in_turn_names_its_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            GOOD_ZONE,
            "limit_req_zones.z.scope: scope: cluster needs a limit_store",
        ),
        (
            GOOD_STORE,
            "{ rate: 2r/s, scope: global }",
            "limit_req_zones.z.scope: expected local or cluster",
        ),
        (
            GOOD_STORE,
            "{ rate: 2r/s, scope: 1 }",
            "limit_req_zones.z.scope: expected a string",
        ),
        (
            "limit_store: { redis: [\"redis://127.0.0.1:6379\"], extra: 1 }\n",
            GOOD_ZONE,
            "limit_store.extra: unknown key",
        ),
        (
            "limit_store: { timeout_ms: 25 }\n",
            GOOD_ZONE,
            "limit_store.redis: required key is missing",
        ),
        (
            "limit_store: { redis: [] }\n",
            GOOD_ZONE,
            "limit_store.redis: at least one",
        ),
        (
            "limit_store: { redis: \"redis://127.0.0.1:6379\" }\n",
            GOOD_ZONE,
            "limit_store.redis: expected a list",
        ),
        (
            "limit_store: { redis: [\"http://127.0.0.1:6379\"] }\n",
            GOOD_ZONE,
            "limit_store.redis[0]: expected a redis://host:port URL",
        ),
        (
            "limit_store: { redis: [\"redis://\"] }\n",
            GOOD_ZONE,
            "limit_store.redis[0]:",
        ),
        (
            "limit_store: { redis: [\"redis://127.0.0.1:notaport\"] }\n",
            GOOD_ZONE,
            "limit_store.redis[0]:",
        ),
        (
            "limit_store: { redis: [\"redis://a:1\", \"redis://a:1\"] }\n",
            GOOD_ZONE,
            "limit_store.redis[1]: duplicate URL",
        ),
        (
            "limit_store: { redis: [7] }\n",
            GOOD_ZONE,
            "limit_store.redis[0]: expected a string",
        ),
        (
            "limit_store: { redis: [\"redis://a:1\"], timeout_ms: 0 }\n",
            GOOD_ZONE,
            "limit_store.timeout_ms: must be between 1 and 1000",
        ),
        (
            "limit_store: { redis: [\"redis://a:1\"], timeout_ms: 5000 }\n",
            GOOD_ZONE,
            "limit_store.timeout_ms: must be between 1 and 1000",
        ),
        (
            "limit_store: { redis: [\"redis://a:1\"], timeout_ms: fast }\n",
            GOOD_ZONE,
            "limit_store.timeout_ms:",
        ),
        (
            "limit_store: { redis: [\"redis://a:1\"], fallback: reject }\n",
            GOOD_ZONE,
            "limit_store.fallback: expected local",
        ),
        (
            "limit_store: [\"redis://a:1\"]\n",
            GOOD_ZONE,
            "limit_store: expected a mapping",
        ),
    ];
    for (store, zone, expected) in cases {
        let yaml = file(store, zone);
        let lines = match config::parse(&yaml, "t") {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.lines(),
        };
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "expected a line starting with {expected:?}, got {lines:#?}\n{yaml}"
        );
        let (code, out, err) = common::config_test(&yaml);
        assert_eq!(code, 1, "gateway -t accepted:\n{yaml}\n{out}");
        assert!(
            err.contains(expected),
            "gateway -t did not name {expected:?}:\n{err}"
        );
    }
}
