//! The shared store of `scope: cluster` zones (SPEC §10.1): standalone Redis or Redis Cluster.
//!
//! - One decision per request group is one `EVALSHA` of `decide.lua` (the NGINX arithmetic,
//!   atomic, on the store's clock `TIME`), bounded by `timeout_ms` with `tokio::time::timeout`;
//!   never a blocking call on a Pingora thread.
//! - Errors, timeouts and an open breaker (the `resilience` crate's) make the caller decide on the
//!   zone's local fallback bucket; a half-open probe (a request, or the heartbeat) brings cluster
//!   decisions back by themselves.
//! - Decisions go over a connection of their own, made (lazily, by the first decision) on the
//!   runtime of the request that needed it: Pingora's proxy runtime. A redis-rs connection runs a
//!   driver task on the runtime it was made on; had decisions shared the background connection,
//!   every request would hand its command to another thread and be woken from it (two extra
//!   thread hand-offs per request, which showed up as added p99 on a busy 2-core machine).
//!   Until it is up, decisions use the background connection.
//! - The background connection lives on a small runtime of its own ("limit-store" thread), which
//!   runs the heartbeat: every second each gateway adds itself to a sorted set in the store and
//!   reads how many gateways were live in the last [`LIVE_MS`]; that number divides the fallback
//!   rate and is kept while the store is away.
//! - [`LimitStore::apply`] on every config load: a changed `limit_store` section connects anew
//!   (the old connection's heartbeat stops); the state in Redis is untouched by reloads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script, Value};
use resilience::{BreakerConfig, BreakerState, CircuitBreaker};

use crate::config::model::LimitStoreSettings;
use crate::metrics::Metrics;

/// The decision script's source (see the file for its contract).
const DECIDE_LUA: &str = include_str!("decide.lua");
/// The decision script.
static DECIDE: LazyLock<Script> = LazyLock::new(|| Script::new(DECIDE_LUA));
/// The heartbeat script, sent as plain `EVAL` (once a second), so that `EVALSHA` in Redis's
/// `INFO commandstats` counts decisions only.
const HEARTBEAT: &str = include_str!("heartbeat.lua");

/// The sorted set of live gateways (one key, one slot).
pub const GATEWAYS_KEY: &str = "gwlr:{gateways}:live";
/// How often a gateway announces itself.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A gateway counts as live this long after its last heartbeat.
pub const LIVE_MS: u64 = 3000;
/// Longest wait for a heartbeat or a connection attempt (off the request path).
const BACKGROUND_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the store did not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No store configured, not connected yet, or the breaker is open: not asked at all.
    #[error("limit store unavailable")]
    Unavailable,
    /// The store answered with an error, or the connection failed.
    #[error("limit store error: {0}")]
    Error(String),
    /// No answer within `timeout_ms`.
    #[error("limit store timed out")]
    Timeout,
}

/// A connection to the store, cheap to clone (multiplexed).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn invoke(&mut self, inv: &redis::ScriptInvocation<'_>) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => inv.invoke_async(c).await,
            Conn::Cluster(c) => inv.invoke_async(c).await,
        }
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// One `limit_store` section's live connection, breaker and heartbeat.
struct Store {
    settings: LimitStoreSettings,
    /// The background connection (heartbeat, script loading), on the `limit-store` runtime.
    conn: ArcSwapOption<Conn>,
    /// The decisions' connection, on the runtime of the requests ([`Store::request_conn`]).
    request_conn: ArcSwapOption<Conn>,
    /// A task is making `request_conn`.
    request_connecting: AtomicBool,
    breaker: Arc<CircuitBreaker>,
    /// The last call (decision or heartbeat) succeeded.
    healthy: AtomicBool,
    /// Set when this section is replaced: the heartbeat task ends.
    closed: AtomicBool,
}

/// The process's store client: the current `limit_store` (if any), the live gateway count and the
/// background runtime. Lives as long as the process.
pub struct LimitStore {
    current: ArcSwapOption<Store>,
    /// Live gateways last seen in the store (0: never seen).
    gateways: Arc<AtomicU64>,
    /// This process's heartbeat id.
    id: String,
    metrics: Metrics,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for LimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cur = self.current.load();
        f.debug_struct("LimitStore")
            .field("redis", &cur.as_ref().map(|s| s.settings.redis.clone()))
            .field("gateways", &self.gateways.load(Ordering::Relaxed))
            .field("id", &self.id)
            .finish()
    }
}

/// The breaker in front of the store: three failures in a row, or half of at least ten calls in
/// two seconds, stop calling it for half a second; then one probe decides.
fn breaker_config() -> BreakerConfig {
    BreakerConfig {
        failure_rate: 0.5,
        min_requests: 10,
        window: Duration::from_secs(2),
        open_for: Duration::from_millis(500),
        consecutive_failures: 3,
    }
}

impl LimitStore {
    /// No store yet; `metrics` records every call.
    pub fn new(metrics: Metrics) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        LimitStore {
            current: ArcSwapOption::empty(),
            gateways: Arc::new(AtomicU64::new(0)),
            id: format!("{host}:{}:{}", std::process::id(), uuid::Uuid::new_v4()),
            metrics,
            runtime: OnceLock::new(),
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("limit-store")
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start the limit store runtime: {e}"))
        })
    }

    /// Makes the store match `settings`: unchanged → nothing; changed or new → a new connection
    /// (made in the background; until it is up, cluster zones decide on their fallback);
    /// removed → disconnected.
    pub fn apply(&self, settings: Option<&LimitStoreSettings>) {
        let cur = self.current.load_full();
        if cur.as_ref().map(|s| &s.settings) == settings {
            return;
        }
        if let Some(old) = &cur {
            old.closed.store(true, Ordering::Relaxed);
        }
        let Some(settings) = settings else {
            self.current.store(None);
            return;
        };
        let store = Arc::new(Store {
            settings: settings.clone(),
            conn: ArcSwapOption::empty(),
            request_conn: ArcSwapOption::empty(),
            request_connecting: AtomicBool::new(false),
            breaker: CircuitBreaker::new(breaker_config()),
            healthy: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        self.current.store(Some(Arc::clone(&store)));
        let gateways = Arc::clone(&self.gateways);
        let metrics = self.metrics.clone();
        let id = self.id.clone();
        self.runtime().spawn(maintain(store, gateways, metrics, id));
        tracing::info!(redis = ?settings.redis, timeout_ms = settings.timeout.as_millis() as u64, "limit store configured");
    }

    /// Whether a store is configured with several URLs (Redis Cluster: a decision's keys must
    /// share a slot).
    pub fn is_cluster(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|s| s.settings.is_cluster())
    }

    /// Live gateways last seen in the store, at least 1.
    pub fn gateways(&self) -> u64 {
        self.gateways.load(Ordering::Relaxed).max(1)
    }

    /// Live gateways last seen in the store (0 before the first heartbeat).
    pub fn gateways_seen(&self) -> u64 {
        self.gateways.load(Ordering::Relaxed)
    }

    /// Whether cluster decisions are being made: connected, the last call succeeded and the
    /// breaker is closed.
    pub fn available(&self) -> bool {
        match self.current.load().as_ref() {
            None => false,
            Some(s) => {
                s.conn.load().is_some()
                    && s.healthy.load(Ordering::Relaxed)
                    && s.breaker.state() == BreakerState::Closed
            }
        }
    }

    /// Runs the decision script on `keys` (one slot) with `args`, within `timeout_ms`.
    /// Returns the script's reply as integers.
    pub async fn decide(&self, keys: &[Vec<u8>], args: &[u64]) -> Result<Vec<i64>, StoreError> {
        let Some(store) = self.current.load_full() else {
            return Err(StoreError::Unavailable);
        };
        let Some(conn) = Store::request_conn(&store) else {
            return Err(StoreError::Unavailable);
        };
        let Ok(permit) = store.breaker.try_acquire() else {
            return Err(StoreError::Unavailable);
        };
        let mut conn = Conn::clone(&conn);
        let mut inv = DECIDE.prepare_invoke();
        for k in keys {
            inv.key(k.as_slice());
        }
        for a in args {
            inv.arg(*a);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(store.settings.timeout, conn.invoke(&inv)).await;
        self.metrics
            .limit_store_duration
            .observe(started.elapsed().as_secs_f64());
        let (label, out) = match result {
            Ok(Ok(v)) => match integers(&v) {
                Some(ints) => ("ok", Ok(ints)),
                None => (
                    "error",
                    Err(StoreError::Error(format!("unexpected reply {v:?}"))),
                ),
            },
            Ok(Err(e)) => ("error", Err(StoreError::Error(e.to_string()))),
            Err(_) => ("timeout", Err(StoreError::Timeout)),
        };
        self.metrics
            .limit_store_requests
            .with_label_values(&[label])
            .inc();
        if out.is_ok() {
            permit.success();
            store.healthy.store(true, Ordering::Relaxed);
        } else {
            permit.failure();
            store.healthy.store(false, Ordering::Relaxed);
        }
        out
    }
}

impl Store {
    /// The connection for a decision: the one made on the caller's runtime, else (while that is
    /// being made) the background one; `None` before the store was ever reached. The first call
    /// without a request connection starts making it, as a task on the caller's runtime, which
    /// must live as long as the store is used (Pingora's proxy runtime does).
    fn request_conn(store: &Arc<Store>) -> Option<Arc<Conn>> {
        if let Some(conn) = store.request_conn.load_full() {
            return Some(conn);
        }
        let background = store.conn.load_full()?;
        if !store.request_connecting.swap(true, Ordering::AcqRel) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(Store::connect_requests(Arc::clone(store)));
            } else {
                store.request_connecting.store(false, Ordering::Release);
            }
        }
        Some(background)
    }

    /// Makes `request_conn` here, on the current runtime. A `PING` makes the connection (and its
    /// driver task) exist now, on this runtime, rather than lazily wherever it is first used.
    async fn connect_requests(store: Arc<Store>) {
        let made = async {
            let mut conn = connect(&store.settings).await?;
            conn.query(&redis::cmd("PING")).await?;
            RedisResult::Ok(conn)
        };
        match tokio::time::timeout(BACKGROUND_TIMEOUT * 4, made).await {
            Ok(Ok(conn)) if !store.closed.load(Ordering::Relaxed) => {
                store.request_conn.store(Some(Arc::new(conn)));
                tracing::debug!("limit store: decision connection made on the proxy runtime");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "limit store: decision connection failed; retried by the next decision");
                store.request_connecting.store(false, Ordering::Release);
            }
            Err(_) => store.request_connecting.store(false, Ordering::Release),
        }
    }
}

fn integers(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Connects (retrying), then heartbeats every second until `store` is replaced.
async fn maintain(store: Arc<Store>, gateways: Arc<AtomicU64>, metrics: Metrics, id: String) {
    let mut logged_down = false;
    let mut tick = 0u64;
    while !store.closed.load(Ordering::Relaxed) {
        tick += 1;
        if store.conn.load().is_none() {
            match tokio::time::timeout(BACKGROUND_TIMEOUT * 4, connect(&store.settings)).await {
                Ok(Ok(conn)) => {
                    store.conn.store(Some(Arc::new(conn)));
                    tracing::info!(redis = ?store.settings.redis, "limit store connected");
                }
                Ok(Err(e)) => {
                    if !logged_down {
                        tracing::warn!(error = %e, "limit store unreachable; cluster zones decide locally");
                    }
                    logged_down = true;
                }
                Err(_) => {
                    if !logged_down {
                        tracing::warn!(
                            "limit store connection timed out; cluster zones decide locally"
                        );
                    }
                    logged_down = true;
                }
            }
        }
        if let Some(conn) = store.conn.load_full() {
            let mut conn = Conn::clone(&conn);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(HEARTBEAT)
                .arg(1)
                .arg(GATEWAYS_KEY)
                .arg(id.as_str())
                .arg(LIVE_MS);
            match tokio::time::timeout(BACKGROUND_TIMEOUT, conn.query(&cmd)).await {
                Ok(Ok(Value::Int(n))) => {
                    let n = n.max(1) as u64;
                    gateways.store(n, Ordering::Relaxed);
                    metrics.cluster_gateways.set(n as i64);
                    store.healthy.store(true, Ordering::Relaxed);
                    // The store answers: let the heartbeat be the breaker's probe, so cluster
                    // decisions resume even before the next request.
                    if store.breaker.state() != BreakerState::Closed {
                        if let Ok(p) = store.breaker.try_acquire() {
                            p.success();
                        }
                    }
                    // Keep the decision script in the script cache of every master (on Redis
                    // Cluster SCRIPT LOAD goes to all of them): on connect, after an outage
                    // (a restarted or promoted node has an empty cache) and every 10 s, so that
                    // a decision is one EVALSHA, not a NOSCRIPT miss and a retry.
                    if logged_down || tick % 10 == 1 {
                        let mut load = redis::cmd("SCRIPT");
                        load.arg("LOAD").arg(DECIDE_LUA);
                        if let Ok(Err(e)) =
                            tokio::time::timeout(BACKGROUND_TIMEOUT, conn.query(&load)).await
                        {
                            tracing::debug!(error = %e, "SCRIPT LOAD failed");
                        }
                    }
                    if logged_down {
                        tracing::info!(gateways = n, "limit store answers again");
                    }
                    logged_down = false;
                }
                other => {
                    store.healthy.store(false, Ordering::Relaxed);
                    if !logged_down {
                        let why = match other {
                            Ok(Ok(v)) => format!("unexpected reply {v:?}"),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "timed out".to_string(),
                        };
                        tracing::warn!(error = %why, gateways = gateways.load(Ordering::Relaxed), "limit store heartbeat failed; cluster zones decide locally at rate / gateways");
                    }
                    logged_down = true;
                }
            }
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

async fn connect(settings: &LimitStoreSettings) -> RedisResult<Conn> {
    if settings.is_cluster() {
        let client = ClusterClientBuilder::new(settings.redis.iter().map(String::as_str))
            .connection_timeout(BACKGROUND_TIMEOUT)
            .response_timeout(BACKGROUND_TIMEOUT)
            .retries(1)
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        let client = redis::Client::open(settings.redis[0].as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(BACKGROUND_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }
}
