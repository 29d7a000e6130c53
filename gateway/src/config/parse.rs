//! YAML tree → validated [`GatewayConfig`], collecting every problem with its key path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use pingora::time::fast_timeout::DEFAULT_FAST_TIMEOUT_TO_TOKIO_THRESHOLD;
use serde_norway::Value;

use super::model::*;
use super::reader::{as_str, join, show, Map, Problems};

/// Largest value accepted for a `*_ms` duration: one day.
const MAX_MS: u64 = 86_400_000;

/// Smallest `client.max_header_bytes`: a request line and a few ordinary headers.
const MIN_HEADER_BYTES: u64 = 1024;

/// Largest `client.max_header_bytes`: Pingora's own head buffer limit (1 MiB).
const MAX_HEADER_BYTES: u64 = 1024 * 1024;

/// Largest `client.max_connections`: far above any open-file limit.
const MAX_CONNECTIONS: u64 = 100_000_000;

/// Reads the whole document. Returns the model only when no problem was found.
pub(crate) fn document(
    root: &Value,
    source: ConfigSource,
    p: &mut Problems,
) -> Option<GatewayConfig> {
    let mut top = Map::open(Some(root), "", p);
    let server = server(top.get("server"), p);
    let listen = socket_addr(top.required("listen", p), "listen", p);
    let admin_listen = match top.get("admin_listen") {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        v => socket_addr(v, "admin_listen", p),
    };
    let client = client(top.get("client"), p);
    let limit_req_status = top.uint("limit_req_status", 429, 400, 599, p) as u16;
    let limit_conn_status = top.uint("limit_conn_status", 429, 400, 599, p) as u16;

    let limit_store = top
        .get("limit_store")
        .and_then(|v| limit_store(v, "limit_store", p));
    let store_written = top.get("limit_store").is_some();
    let mut limit_req_zones = BTreeMap::new();
    for (name, path, v) in top.named("limit_req_zones", p) {
        zone_name(&name, &path, p);
        if let Some(z) = limit_req_zone(&name, &path, v, store_written, p) {
            limit_req_zones.insert(name, z);
        }
    }
    let mut limit_conn_zones = BTreeMap::new();
    for (name, path, v) in top.named("limit_conn_zones", p) {
        zone_name(&name, &path, p);
        let mut m = Map::open(Some(v), &path, p);
        let key = limit_key(m.get("key"), &m.key_path("key"), p);
        let max_keys = m.uint("max_keys", 100_000, 1, u32::MAX as u64, p) as usize;
        m.finish(p);
        limit_conn_zones.insert(
            name.clone(),
            LimitConnZone {
                name,
                key,
                max_keys,
            },
        );
    }

    let mut upstreams = BTreeMap::new();
    let named_upstreams = top.named("upstreams", p);
    if named_upstreams.is_empty() {
        p.push("upstreams", "at least one upstream is required");
    }
    for (name, path, v) in named_upstreams {
        zone_name(&name, &path, p);
        if let Some(u) = upstream(&name, &path, v, p) {
            upstreams.insert(name, u);
        }
    }

    let mut routes = Vec::new();
    let route_items = top.list("routes", p);
    if route_items.is_empty() {
        p.push("routes", "at least one route is required");
    }
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    let known = Known {
        upstreams: names_as_written(root, "upstreams"),
        req_zones: names_as_written(root, "limit_req_zones"),
        conn_zones: names_as_written(root, "limit_conn_zones"),
    };
    for (path, v) in route_items {
        // Duplicates are judged on the prefixes as written, valid routes or not.
        if let Some(prefix) = v.get("path_prefix").and_then(Value::as_str) {
            if let Some(first) = prefixes.get(prefix) {
                p.push(
                    &join(&path, "path_prefix"),
                    format!("duplicate path_prefix {prefix:?} (also in {first})"),
                );
            } else {
                prefixes.insert(prefix.to_string(), path.clone());
            }
        }
        if let Some(r) = route(&path, v, &known, p) {
            routes.push(r);
        }
    }
    top.finish(p);

    if let (Some(l), Some(a)) = (listen, admin_listen) {
        if l == a {
            p.push("admin_listen", format!("must differ from listen ({l})"));
        }
    }
    // Longest prefix first, so the first match is the longest match.
    routes.sort_by(|a: &Route, b: &Route| {
        b.path_prefix
            .len()
            .cmp(&a.path_prefix.len())
            .then_with(|| a.path_prefix.cmp(&b.path_prefix))
    });

    if !p.0.is_empty() {
        return None;
    }
    Some(GatewayConfig {
        server,
        listen: listen?,
        admin_listen: admin_listen?,
        client,
        limit_req_status,
        limit_conn_status,
        limit_store,
        limit_req_zones,
        limit_conn_zones,
        upstreams,
        routes,
        source,
    })
}

/// Names that routes may reference.
struct Known {
    upstreams: BTreeSet<String>,
    req_zones: BTreeSet<String>,
    conn_zones: BTreeSet<String>,
}

/// Names defined under the top-level `section` as written, including those whose body had
/// problems (so a route naming a broken upstream or zone is not also reported as unknown).
fn names_as_written(root: &Value, section: &str) -> BTreeSet<String> {
    match root.get(section) {
        Some(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn zone_name(name: &str, path: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        p.push(
            path,
            "names may only contain letters, digits, '_', '-' and '.'",
        );
    }
}

fn server(v: Option<&Value>, p: &mut Problems) -> ServerSettings {
    let mut m = Map::open(v, "server", p);
    let threads = m.uint("threads", 2, 1, 1024, p) as usize;
    let grace_period_seconds = m.uint("grace_period_seconds", 1, 0, 3600, p);
    let graceful_shutdown_timeout_seconds =
        m.uint("graceful_shutdown_timeout_seconds", 5, 0, 3600, p);
    let work_stealing = m.boolean("work_stealing", true, p);
    let upstream_keepalive_pool_size =
        m.uint("upstream_keepalive_pool_size", 128, 1, 1_000_000, p) as usize;
    let fast_timeout_to_tokio_threshold_seconds = m.uint(
        "fast_timeout_to_tokio_threshold_seconds",
        DEFAULT_FAST_TIMEOUT_TO_TOKIO_THRESHOLD.as_secs(),
        0,
        MAX_MS / 1000,
        p,
    );
    m.finish(p);
    ServerSettings {
        threads,
        grace_period_seconds,
        graceful_shutdown_timeout_seconds,
        work_stealing,
        upstream_keepalive_pool_size,
        fast_timeout_to_tokio_threshold_seconds,
    }
}

fn socket_addr(v: Option<&Value>, path: &str, p: &mut Problems) -> Option<SocketAddr> {
    let s = as_str(v?, path, p)?;
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(path, format!("expected \"<ip>:<port>\", got {s:?}"));
            None
        }
    }
}

fn millis(
    m: &mut Map<'_>,
    key: &'static str,
    default: u64,
    min: u64,
    p: &mut Problems,
) -> Duration {
    Duration::from_millis(m.uint(key, default, min, MAX_MS, p))
}

fn client(v: Option<&Value>, p: &mut Problems) -> ClientSettings {
    let mut m = Map::open(v, "client", p);
    let header_timeout = millis(&mut m, "header_timeout_ms", 10_000, 1, p);
    let max_body_bytes = m.uint("max_body_bytes", 65_536, 0, u64::MAX, p);
    let body_timeout = millis(&mut m, "body_timeout_ms", 10_000, 1, p);
    let keepalive_timeout = millis(&mut m, "keepalive_timeout_ms", 60_000, 1000, p);
    let keepalive_requests = m.uint("keepalive_requests", 1000, 1, 1_000_000_000, p) as u32;
    let max_header_bytes = m.uint(
        "max_header_bytes",
        65_536,
        MIN_HEADER_BYTES,
        MAX_HEADER_BYTES,
        p,
    ) as usize;
    // 0 stands for "not set" (derived from the open-file limit); a value given must be >= 1.
    let max_connections = m.uint("max_connections", 0, 1, MAX_CONNECTIONS, p);
    let mut trusted_proxies = Vec::new();
    for (path, item) in m.list("trusted_proxies", p) {
        if let Some(s) = as_str(item, &path, p) {
            match parse_cidr(s) {
                Some(net) => trusted_proxies.push(net),
                None => p.push(
                    &path,
                    format!("expected a CIDR like \"10.0.0.0/8\" or an IP, got {s:?}"),
                ),
            }
        }
    }
    m.finish(p);
    ClientSettings {
        header_timeout,
        max_header_bytes,
        max_body_bytes,
        body_timeout,
        keepalive_timeout,
        keepalive_requests,
        trusted_proxies,
        max_connections: (max_connections > 0).then_some(max_connections as usize),
    }
}

/// `10.0.0.0/8`, or a bare address meaning a single host.
fn parse_cidr(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

fn limit_key(v: Option<&Value>, path: &str, p: &mut Problems) -> LimitKey {
    let Some(v) = v else {
        return LimitKey::ClientIp;
    };
    let Some(s) = as_str(v, path, p) else {
        return LimitKey::ClientIp;
    };
    match s {
        "client_ip" => LimitKey::ClientIp,
        "global" => LimitKey::Global,
        _ => match s.strip_prefix("header:") {
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                LimitKey::Header(name.to_ascii_lowercase())
            }
            _ => {
                p.push(
                    path,
                    format!("expected client_ip, global or header:<Name>, got {s:?}"),
                );
                LimitKey::ClientIp
            }
        },
    }
}

/// Parses `Nr/s` or `Nr/m` the way `ngx_http_limit_req_zone` does: milli-requests per second,
/// `N * 1000 / scale`, integer division.
pub fn parse_rate(s: &str) -> Option<Rate> {
    let (n, scale) = if let Some(n) = s.strip_suffix("r/s") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix("r/m") {
        (n, 60)
    } else {
        return None;
    };
    let n: u64 = n.parse().ok()?;
    let milli = n.checked_mul(1000)? / scale;
    (milli > 0).then_some(Rate {
        milli_per_sec: milli,
    })
}

/// Largest `limit_store.timeout_ms`: a store slower than this is no use on the request path.
const MAX_STORE_TIMEOUT_MS: u64 = 1000;

/// The `limit_store` section (SPEC §10.1).
fn limit_store(v: &Value, path: &str, p: &mut Problems) -> Option<LimitStoreSettings> {
    let before = p.0.len();
    let mut m = Map::open(Some(v), path, p);
    let redis_path = m.key_path("redis");
    let mut redis = Vec::new();
    if m.required("redis", p).is_some() {
        let items = m.list("redis", p);
        if items.is_empty() {
            p.push(&redis_path, "at least one redis:// URL is required");
        }
        for (ipath, item) in items {
            if let Some(s) = as_str(item, &ipath, p) {
                match redis_url(s) {
                    Ok(()) if redis.iter().any(|r| r == s) => {
                        p.push(&ipath, format!("duplicate URL {s:?}"));
                    }
                    Ok(()) => redis.push(s.to_string()),
                    Err(e) => p.push(&ipath, e),
                }
            }
        }
    }
    let timeout = Duration::from_millis(m.uint("timeout_ms", 25, 1, MAX_STORE_TIMEOUT_MS, p));
    let fb_path = m.key_path("fallback");
    let fallback = match m.string("fallback", p) {
        None | Some("local") => StoreFallback::Local,
        Some(other) => {
            p.push(&fb_path, format!("expected local, got {other:?}"));
            StoreFallback::Local
        }
    };
    m.finish(p);
    (p.0.len() == before).then_some(LimitStoreSettings {
        redis,
        timeout,
        fallback,
    })
}

/// A `redis://host:port[/db]` URL the Redis client accepts.
fn redis_url(s: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    if !s.starts_with("redis://") {
        return Err(format!("expected a redis://host:port URL, got {s:?}"));
    }
    match s.into_connection_info() {
        Ok(info) if matches!(info.addr(), redis::ConnectionAddr::Tcp(h, _) if !h.is_empty()) => {
            Ok(())
        }
        Ok(_) => Err(format!("expected a redis://host:port URL, got {s:?}")),
        Err(e) => Err(format!("invalid Redis URL {s:?}: {e}")),
    }
}

fn limit_req_zone(
    name: &str,
    path: &str,
    v: &Value,
    store_written: bool,
    p: &mut Problems,
) -> Option<LimitReqZone> {
    let mut m = Map::open(Some(v), path, p);
    let key = limit_key(m.get("key"), &m.key_path("key"), p);
    let rate_path = m.key_path("rate");
    let rate = match m.required("rate", p) {
        None => None,
        Some(v) => {
            let text = match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            };
            match text.as_deref().and_then(parse_rate) {
                Some(r) => Some(r),
                None => {
                    p.push(
                        &rate_path,
                        format!(
                            "expected \"<N>r/s\" or \"<N>r/m\" with N > 0, got {}",
                            show(v)
                        ),
                    );
                    None
                }
            }
        }
    };
    let max_keys = m.uint("max_keys", 100_000, 1, u32::MAX as u64, p) as usize;
    let scope_path = m.key_path("scope");
    let scope = match m.string("scope", p) {
        None | Some("local") => Scope::Local,
        Some("cluster") => {
            if !store_written {
                p.push(
                    &scope_path,
                    "scope: cluster needs a limit_store section (the shared Redis)",
                );
            }
            Scope::Cluster
        }
        Some(other) => {
            p.push(
                &scope_path,
                format!("expected local or cluster, got {other:?}"),
            );
            Scope::Local
        }
    };
    m.finish(p);
    Some(LimitReqZone {
        name: name.to_string(),
        key,
        rate: rate?,
        max_keys,
        scope,
    })
}

/// `host:port` or `[v6]:port`.
fn server_spec(s: &str) -> Result<ServerSpec, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected \"<host>:<port>\", got {s:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("expected \"<host>:<port>\", got {s:?}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port must be 1..=65535 in {s:?}"))?;
    Ok(ServerSpec {
        host: host.to_string(),
        port,
    })
}

fn upstream(name: &str, path: &str, v: &Value, p: &mut Problems) -> Option<Upstream> {
    let before = p.0.len();
    let mut m = Map::open(Some(v), path, p);
    let servers_path = m.key_path("servers");
    let mut servers = Vec::new();
    if m.required("servers", p).is_some() {
        let items = m.list("servers", p);
        if items.is_empty() {
            p.push(&servers_path, "at least one server is required");
        }
        let mut seen = std::collections::HashSet::new();
        for (ipath, item) in items {
            if let Some(s) = as_str(item, &ipath, p) {
                match server_spec(s) {
                    Ok(spec) if !seen.insert(spec.clone()) => {
                        p.push(&ipath, format!("duplicate server {s:?}"));
                    }
                    Ok(spec) => servers.push(spec),
                    Err(e) => p.push(&ipath, e),
                }
            }
        }
    }
    let max_inflight = m.uint("max_inflight", 50, 1, 1_000_000, p) as usize;
    let queue = m.uint("queue", 0, 0, 1_000_000, p) as usize;
    let queue_timeout = millis(&mut m, "queue_timeout_ms", 0, 0, p);
    if queue > 0 && queue_timeout.is_zero() {
        p.push(
            &m.key_path("queue_timeout_ms"),
            "must be > 0 when queue > 0 (queued requests need time to wait)",
        );
    }
    let connect_timeout = millis(&mut m, "connect_timeout_ms", 500, 1, p);
    let read_timeout = millis(&mut m, "read_timeout_ms", 16_000, 1, p);
    let write_timeout = millis(&mut m, "write_timeout_ms", 5_000, 1, p);
    let retries = m.uint("retries", 1, 0, 10, p) as u32;
    let keepalive_idle_timeout = millis(&mut m, "keepalive_idle_timeout_ms", 60_000, 1, p);
    let tcp_keepalive_path = m.key_path("tcp_keepalive");
    let tcp_keepalive = m
        .get("tcp_keepalive")
        .map(|v| tcp_keepalive(&tcp_keepalive_path, v, p));

    let hc_path = m.key_path("health_check");
    let mut hc = Map::open(m.get("health_check"), &hc_path, p);
    let hc_check_path = hc.key_path("path");
    let hpath = hc.string("path", p).unwrap_or("/health").to_string();
    if !hpath.starts_with('/') {
        p.push(
            &hc_check_path,
            format!("must start with '/', got {hpath:?}"),
        );
    }
    let health_check = HealthCheck {
        path: hpath,
        interval: millis(&mut hc, "interval_ms", 500, 1, p),
        timeout: millis(&mut hc, "timeout_ms", 300, 1, p),
        rise: hc.uint("rise", 2, 1, 1000, p) as u32,
        fall: hc.uint("fall", 2, 1, 1000, p) as u32,
    };
    hc.finish(p);

    let o_path = m.key_path("outlier");
    let mut o = Map::open(m.get("outlier"), &o_path, p);
    let outlier = Outlier {
        consecutive_failures: o.uint("consecutive_failures", 3, 1, 1_000_000, p) as u32,
        base_ejection: millis(&mut o, "base_ejection_ms", 10_000, 1, p),
        max_ejection_percent: o.uint("max_ejection_percent", 50, 0, 100, p) as u32,
    };
    o.finish(p);

    let cb_path = m.key_path("circuit_breaker");
    let mut cb = Map::open(m.get("circuit_breaker"), &cb_path, p);
    let rate_path = cb.key_path("failure_rate");
    let failure_rate = cb.float("failure_rate", 0.5, p);
    if !(failure_rate > 0.0 && failure_rate <= 1.0) {
        p.push(&rate_path, format!("must be in (0, 1], got {failure_rate}"));
    }
    let circuit_breaker = CircuitBreakerSettings {
        failure_rate,
        min_requests: cb.uint("min_requests", 20, 1, 1_000_000, p) as u32,
        window: millis(&mut cb, "window_ms", 10_000, 1, p),
        open: millis(&mut cb, "open_ms", 15_000, 1, p),
    };
    cb.finish(p);

    let failure_statuses = if m.get("failure_statuses").is_some() {
        let mut out = Vec::new();
        for (ipath, item) in m.list("failure_statuses", p) {
            match item.as_u64() {
                Some(code) if (400..=599).contains(&code) => out.push(code as u16),
                _ => p.push(
                    &ipath,
                    format!("expected a status code in 400..=599, got {}", show(item)),
                ),
            }
        }
        out
    } else {
        vec![500, 502, 504]
    };
    m.finish(p);

    if p.0.len() != before {
        return None;
    }
    Some(Upstream {
        name: name.to_string(),
        servers,
        max_inflight,
        queue,
        queue_timeout,
        connect_timeout,
        read_timeout,
        write_timeout,
        retries,
        health_check,
        outlier,
        circuit_breaker,
        failure_statuses,
        keepalive_idle_timeout,
        tcp_keepalive,
    })
}

/// An upstream's `tcp_keepalive: {idle_ms, interval_ms, count}` (all required: there is no
/// sensible default for one without the others).
fn tcp_keepalive(path: &str, v: &Value, p: &mut Problems) -> TcpKeepalive {
    let mut m = Map::open(Some(v), path, p);
    for key in ["idle_ms", "interval_ms", "count"] {
        m.required(key, p);
    }
    // The kernel counts whole seconds (TCP_KEEPIDLE, TCP_KEEPINTVL).
    let idle = millis(&mut m, "idle_ms", 1000, 1000, p);
    let interval = millis(&mut m, "interval_ms", 1000, 1000, p);
    let count = m.uint("count", 1, 1, 127, p) as u32;
    m.finish(p);
    TcpKeepalive {
        idle,
        interval,
        count,
    }
}

fn route(path: &str, v: &Value, known: &Known, p: &mut Problems) -> Option<Route> {
    let before = p.0.len();
    let mut m = Map::open(Some(v), path, p);
    let prefix_path = m.key_path("path_prefix");
    let path_prefix = m.required_string("path_prefix", p).map(str::to_string);
    if let Some(pp) = &path_prefix {
        if !pp.starts_with('/') {
            p.push(&prefix_path, format!("must start with '/', got {pp:?}"));
        }
    }
    let up_path = m.key_path("upstream");
    let upstream = m.required_string("upstream", p).map(str::to_string);
    if let Some(u) = &upstream {
        if !known.upstreams.contains(u) {
            p.push(&up_path, format!("unknown upstream {u:?}"));
        }
    }
    let timeout = millis(&mut m, "timeout_ms", 30_000, 1, p);

    let mut limit_req = Vec::new();
    for (ipath, item) in m.list("limit_req", p) {
        let mut r = Map::open(Some(item), &ipath, p);
        let zpath = r.key_path("zone");
        let zone = r.required_string("zone", p).map(str::to_string);
        if let Some(z) = &zone {
            if !known.req_zones.contains(z) {
                p.push(&zpath, format!("unknown zone {z:?}"));
            }
        }
        let burst = r.uint("burst", 0, 0, 1_000_000_000, p);
        let nodelay = r.boolean("nodelay", false, p);
        let delay = r.uint("delay", 0, 0, 1_000_000_000, p);
        let dry_run = r.boolean("dry_run", false, p);
        r.finish(p);
        if let Some(zone) = zone {
            if limit_req.iter().any(|x: &LimitReqRule| x.zone == zone) {
                p.push(&zpath, format!("zone {zone:?} is used twice on this route"));
            }
            limit_req.push(LimitReqRule {
                zone,
                burst,
                nodelay,
                delay,
                dry_run,
            });
        }
    }
    let mut limit_conn = Vec::new();
    for (ipath, item) in m.list("limit_conn", p) {
        let mut r = Map::open(Some(item), &ipath, p);
        let zpath = r.key_path("zone");
        let zone = r.required_string("zone", p).map(str::to_string);
        if let Some(z) = &zone {
            if !known.conn_zones.contains(z) {
                p.push(&zpath, format!("unknown zone {z:?}"));
            }
        }
        let max = if r.required("max", p).is_some() {
            r.uint("max", 1, 1, 1_000_000_000, p)
        } else {
            1
        };
        let dry_run = r.boolean("dry_run", false, p);
        r.finish(p);
        if let Some(zone) = zone {
            if limit_conn.iter().any(|x: &LimitConnRule| x.zone == zone) {
                p.push(&zpath, format!("zone {zone:?} is used twice on this route"));
            }
            limit_conn.push(LimitConnRule { zone, max, dry_run });
        }
    }
    m.finish(p);
    if p.0.len() != before {
        return None;
    }
    Some(Route {
        path_prefix: path_prefix?,
        upstream: upstream?,
        timeout,
        limit_req,
        limit_conn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_nginx_integer_arithmetic() {
        assert_eq!(
            parse_rate("2r/s"),
            Some(Rate {
                milli_per_sec: 2000
            })
        );
        assert_eq!(
            parse_rate("100r/m"),
            Some(Rate {
                milli_per_sec: 1666
            })
        );
        assert_eq!(parse_rate("1r/m"), Some(Rate { milli_per_sec: 16 }));
        assert_eq!(parse_rate("0r/s"), None);
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("2 r/s"), None);
    }

    #[test]
    fn server_specs() {
        assert_eq!(
            server_spec("a:1").map(|s| s.to_string()),
            Ok("a:1".to_string())
        );
        assert_eq!(
            server_spec("[::1]:80").map(|s| s.host),
            Ok("::1".to_string())
        );
        assert!(server_spec("a").is_err());
        assert!(server_spec("a:0").is_err());
        assert!(server_spec(":80").is_err());
    }
}
