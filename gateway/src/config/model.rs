//! The validated internal model of `conf/gateway.yaml` (SPEC §7).
//!
//! Everything here has already been checked: rates are positive, zones and upstreams referenced by
//! routes exist, server lists are non-empty, durations are `Duration`s. The rest of the gateway
//! never sees raw YAML. Parsing and validation live in `config::parse` / `config::validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

/// A fully validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Settings handed to Pingora's `ServerConf`.
    pub server: ServerSettings,
    /// Proxy listener address.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/status`, dashboard).
    pub admin_listen: SocketAddr,
    /// Client-side protections.
    pub client: ClientSettings,
    /// Status code used for `limit_req` rejections (default 429).
    pub limit_req_status: u16,
    /// Status code used for `limit_conn` rejections (default 429).
    pub limit_conn_status: u16,
    /// The shared store of `scope: cluster` zones (SPEC §10.1), if configured.
    pub limit_store: Option<LimitStoreSettings>,
    /// `limit_req` zones by name.
    pub limit_req_zones: BTreeMap<String, LimitReqZone>,
    /// `limit_conn` zones by name.
    pub limit_conn_zones: BTreeMap<String, LimitConnZone>,
    /// Upstream pools by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, sorted longest `path_prefix` first so the first match is the longest match.
    pub routes: Vec<Route>,
    /// Where this config came from.
    pub source: ConfigSource,
}

/// Pingora server settings (`server:` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads per service (default 2).
    pub threads: usize,
    /// Seconds Pingora waits after SIGTERM before starting the graceful shutdown (default 1).
    pub grace_period_seconds: u64,
    /// Seconds the graceful shutdown may last (default 5).
    pub graceful_shutdown_timeout_seconds: u64,
    /// Pingora's `work_stealing`: one runtime whose threads steal each other's tasks (default
    /// true, Pingora's default), or one single-threaded runtime per thread.
    pub work_stealing: bool,
    /// Pingora's `upstream_keepalive_pool_size`: idle upstream connections kept for reuse,
    /// across all upstreams (default 128, Pingora's default).
    pub upstream_keepalive_pool_size: usize,
    /// Pingora's `fast_timeout_to_tokio_threshold_seconds`: Pingora's timeouts (upstream
    /// connect, read and write) longer than this many whole seconds run on tokio's timer, the
    /// rest on Pingora's own coarse timer wheel (default Pingora's, 900).
    pub fast_timeout_to_tokio_threshold_seconds: u64,
}

/// TCP keepalive probes on upstream connections (`tcp_keepalive:` of an upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

/// Client-side protections (`client:` section).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// The whole request head must arrive within this, else 408 and close (default 10 s).
    pub header_timeout: Duration,
    /// Larger request heads (request line and headers) get 431 and close (default 65536).
    pub max_header_bytes: usize,
    /// Larger request bodies get 413 (default 65536).
    pub max_body_bytes: u64,
    /// Longest wait for the next piece of a request body, like NGINX's `client_body_timeout`
    /// (default 10 s); the route's `timeout_ms` bounds the whole body too. Too slow → 408.
    pub body_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests (default 60 s), to the
    /// millisecond. Read when a connection is accepted: a reload applies to new connections.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed, like NGINX's
    /// `keepalive_requests` (default 1000).
    pub keepalive_requests: u32,
    /// Peers whose `X-Forwarded-For` is believed (default none).
    pub trusted_proxies: Vec<IpNet>,
    /// Open client connections served at once; past it a new connection gets 503 and is closed.
    /// `None` (the default): derived from the open-file limit
    /// ([`crate::client::connections::auto_max_connections`]).
    pub max_connections: Option<usize>,
}

/// What a limit is keyed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The client IP (socket peer, or right-most untrusted `X-Forwarded-For` entry).
    ClientIp,
    /// The value of a request header, e.g. `header:X-Api-Key` (lower-cased name stored here).
    Header(String),
    /// One key for all requests.
    Global,
}

/// A `limit_req` rate in NGINX's unit: milli-requests per second
/// (`2r/s` → 2000, `100r/m` → 1666, exactly as `ngx_http_limit_req_zone` computes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Milli-requests per second; always > 0.
    pub milli_per_sec: u64,
}

/// A `limit_req_zones` entry. The rate lives on the zone, burst and delay on the route's use of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReqZone {
    /// Zone name, used in metrics and rejection bodies.
    pub name: String,
    /// What the zone is keyed on.
    pub key: LimitKey,
    /// The zone's rate.
    pub rate: Rate,
    /// Upper bound of tracked keys; least recently used keys are evicted first (default 100000).
    pub max_keys: usize,
    /// Where the per-key state lives (default [`Scope::Local`]).
    pub scope: Scope,
}

/// Where a `limit_req` zone keeps its per-key state (SPEC §10.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// In this process only (SPEC §7).
    #[default]
    Local,
    /// In the shared `limit_store`: every gateway sharing it decides on the same state.
    Cluster,
}

impl Scope {
    /// `local` or `cluster`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Cluster => "cluster",
        }
    }
}

/// The `limit_store` section: where `scope: cluster` zones keep their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStoreSettings {
    /// Redis URLs: one = standalone Redis, several = Redis Cluster seed nodes.
    pub redis: Vec<String>,
    /// Longest wait for one store round trip; slower counts as a store failure (default 25 ms).
    pub timeout: Duration,
    /// What a zone does while the store is unreachable.
    pub fallback: StoreFallback,
}

impl LimitStoreSettings {
    /// Several URLs: Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.redis.len() > 1
    }
}

/// `limit_store.fallback`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreFallback {
    /// Decide on a local bucket at `rate / N` (N = live gateways last seen in the store).
    #[default]
    Local,
}

/// A `limit_conn_zones` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConnZone {
    /// Zone name, used in metrics and rejection bodies.
    pub name: String,
    /// What the zone is keyed on.
    pub key: LimitKey,
    /// Upper bound of tracked keys (default 100000).
    pub max_keys: usize,
}

/// One upstream server as written in the config (`host:port`). Resolution to a `SocketAddr`
/// happens at run time (on load and on every health check), never on the request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path requested with GET; 2xx means healthy.
    pub path: String,
    /// Time between checks (default 500 ms).
    pub interval: Duration,
    /// Per-check timeout (default 300 ms).
    pub timeout: Duration,
    /// Consecutive successes to mark a server up (default 2).
    pub rise: u32,
    /// Consecutive failures to mark a server down (default 2).
    pub fall: u32,
}

/// Passive outlier ejection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive failures that eject a server (default 3).
    pub consecutive_failures: u32,
    /// Ejection time is `base_ejection × times_ejected` (default 10 s).
    pub base_ejection: Duration,
    /// At most this percentage of a pool is ejected at once, but at least one server stays (default 50).
    pub max_ejection_percent: u32,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerSettings {
    /// Failure ratio in (0, 1] that opens the breaker (default 0.5).
    pub failure_rate: f64,
    /// Minimum requests in the window before the rate is judged (default 20).
    pub min_requests: u32,
    /// Sliding window length (default 10 s).
    pub window: Duration,
    /// Time spent open before a half-open probe (default 15 s).
    pub open: Duration,
}

/// An upstream pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Pool name.
    pub name: String,
    /// Servers, never empty.
    pub servers: Vec<ServerSpec>,
    /// Bulkhead: concurrent requests (default 50).
    pub max_inflight: usize,
    /// Requests that may wait for a bulkhead slot (default 0).
    pub queue: usize,
    /// How long a queued request waits (default 0).
    pub queue_timeout: Duration,
    /// TCP connect timeout (default 500 ms).
    pub connect_timeout: Duration,
    /// Per-read timeout (default 16 s).
    pub read_timeout: Duration,
    /// Per-write timeout (default 5 s).
    pub write_timeout: Duration,
    /// Connection-failure retries, always on another server (default 1).
    pub retries: u32,
    /// Active checks.
    pub health_check: HealthCheck,
    /// Passive ejection.
    pub outlier: Outlier,
    /// Circuit breaker.
    pub circuit_breaker: CircuitBreakerSettings,
    /// Upstream statuses counted as failures (default `[500, 502, 504]`; 503 is deliberate shedding).
    pub failure_statuses: Vec<u16>,
    /// How long an idle connection to a server is kept in Pingora's pool for reuse (default
    /// 60 s).
    pub keepalive_idle_timeout: Duration,
    /// TCP keepalive probes on connections to the servers (default off).
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// A route's use of a `limit_req` zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReqRule {
    /// Zone name (exists in `GatewayConfig::limit_req_zones`).
    pub zone: String,
    /// Burst in requests (default 0).
    pub burst: u64,
    /// `nodelay: true`: accepted excess is served at once.
    pub nodelay: bool,
    /// `delay: N`: the first N excess requests are served at once, the rest delayed (default 0).
    /// Ignored when `nodelay` is set.
    pub delay: u64,
    /// Count and log, never reject or delay.
    pub dry_run: bool,
}

/// A route's use of a `limit_conn` zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConnRule {
    /// Zone name (exists in `GatewayConfig::limit_conn_zones`).
    pub zone: String,
    /// Maximum requests in flight per key; reject when the count is already `max`.
    pub max: u64,
    /// Count and log, never reject.
    pub dry_run: bool,
}

/// A route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Prefix matched against the request path; the longest match wins.
    pub path_prefix: String,
    /// Upstream name (exists in `GatewayConfig::upstreams`).
    pub upstream: String,
    /// Whole-request deadline (default 30 s).
    pub timeout: Duration,
    /// Rate limits, all checked then committed.
    pub limit_req: Vec<LimitReqRule>,
    /// Concurrency limits.
    pub limit_conn: Vec<LimitConnRule>,
}

/// Where the loaded config came from, for `/status` and the reload log.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Path of the file as given on the command line.
    pub path: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}
