//! The shared store of `scope: cluster` zones (SPEC §10.1): standalone Redis or Redis Cluster.
//!
//! - A request's decision (all its cluster limits of one hash tag) is decided by `decide.lua`
//!   (the NGINX arithmetic, atomic, on the store's clock `TIME`), bounded by `timeout_ms` with
//!   `tokio::time::timeout`; never a blocking call on a Pingora thread. Decisions that arrive
//!   while a call is on the wire go together in the next `EVALSHA` ([`Lanes`]): at most one
//!   round trip per request, far fewer under load.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{RedisResult, Script, Value};
use resilience::{BreakerConfig, BreakerState, CircuitBreaker};
use tokio::sync::oneshot;

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
    /// Decisions waiting for their script call.
    lanes: Lanes,
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
            lanes: Lanes::default(),
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

    /// Decides one request in the store: `keys` (one slot) with `args` (three numbers per key,
    /// see `decide.lua`), within `timeout_ms` counted from this call, queueing included. Both
    /// are taken as they are into the queue (no copy on the request path).
    /// Returns `[now, rejected, then per key: found, excess, last]`.
    ///
    /// The decision joins its lane's queue ([`Lanes`]); if no call of that lane is on the wire,
    /// this request starts the task that sends the queue as one script call.
    pub async fn decide(&self, keys: Vec<Vec<u8>>, args: Vec<u64>) -> Result<Vec<i64>, StoreError> {
        let Some(store) = self.current.load_full() else {
            return Err(StoreError::Unavailable);
        };
        let Some(conn) = Store::request_conn(&store) else {
            return Err(StoreError::Unavailable);
        };
        // An open breaker answers at once; half-open, the lane's next call is the probe.
        if store.breaker.state() == BreakerState::Open {
            return Err(StoreError::Unavailable);
        }
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let lane = lane_of(store.settings.is_cluster(), &keys);
        let pending = Pending {
            keys,
            args,
            reply: tx,
        };
        if store.lanes.push(lane, pending) {
            let send = send_lane(
                Arc::clone(&store),
                Conn::clone(&conn),
                lane,
                self.metrics.clone(),
            );
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(send)),
                // Not on a runtime: nothing else can be queued behind us meanwhile.
                Err(_) => send.await,
            }
        }
        let out = match tokio::time::timeout(store.settings.timeout, rx).await {
            Ok(Ok(out)) => out,
            Ok(Err(_)) => Err(StoreError::Error("the decision was dropped".into())),
            Err(_) => Err(StoreError::Timeout),
        };
        let label = match &out {
            Ok(_) => "ok",
            Err(StoreError::Timeout) => "timeout",
            Err(StoreError::Error(_)) => "error",
            // Not asked (the breaker opened while it waited): not a round trip.
            Err(StoreError::Unavailable) => return out,
        };
        self.metrics
            .limit_store_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .limit_store_requests
            .with_label_values(&[label])
            .inc();
        out
    }
}

/// The most decisions one script call carries. Each costs Redis a few µs, so a full batch keeps
/// the script well under a millisecond and never blocks Redis for long.
const MAX_BATCH: usize = 128;

/// What a decision's caller waits for.
type Answer = Result<Vec<i64>, StoreError>;

/// One queued decision.
struct Pending {
    keys: Vec<Vec<u8>>,
    args: Vec<u64>,
    reply: oneshot::Sender<Answer>,
}

/// One lane: decisions waiting, and whether a call of this lane is on the wire.
#[derive(Default)]
struct Lane {
    queue: Vec<Pending>,
    busy: bool,
}

/// Which decisions one script call may cover: all of them on a standalone Redis (`None`), those
/// of one slot on Redis Cluster.
type LaneId = Option<Slot>;

/// Decisions waiting to be sent, by lane ([`LaneId`]).
///
/// Why batching: a decision is a few `GET`/`SET`s, but a script call costs Redis far more than
/// that (call set-up, `TIME`, argument parsing) and costs the gateway a command to encode, two
/// syscalls and a wake-up. With one call per lane on the wire at a time, the decisions that
/// arrive meanwhile go together in the next call: an idle gateway sends each decision at once,
/// a busy one sends as many per call as arrived during one round trip. No timer, no added wait
/// beyond the call already on the wire.
#[derive(Default)]
struct Lanes {
    lanes: Mutex<HashMap<LaneId, Lane>>,
}

impl Lanes {
    /// Queues `p` on `lane`. Returns true when no call of the lane is on the wire: the caller
    /// must start [`send_lane`].
    fn push(&self, lane: LaneId, p: Pending) -> bool {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let l = lanes.entry(lane).or_default();
        l.queue.push(p);
        !std::mem::replace(&mut l.busy, true)
    }

    /// The next batch of `lane` (its callers still waiting), at most [`MAX_BATCH`]; empty when
    /// the queue is, and then the lane is idle again (removed).
    fn take(&self, lane: LaneId) -> Vec<Pending> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = lanes.get_mut(&lane) else {
            return Vec::new();
        };
        // Callers that gave up (timed out) are not decided: they were decided on the fallback.
        l.queue.retain(|p| !p.reply.is_closed());
        if l.queue.is_empty() {
            lanes.remove(&lane);
            return Vec::new();
        }
        let n = l.queue.len().min(MAX_BATCH);
        l.queue.drain(..n).collect()
    }
}

/// The lane of a decision on `keys`: on Redis Cluster the slot of its first key (all its keys
/// share the limit key as hash tag), one lane for everything on a standalone Redis.
fn lane_of(cluster: bool, keys: &[Vec<u8>]) -> LaneId {
    keys.first().filter(|_| cluster).map(Slot::for_key)
}

/// Sends `lane`'s queue, one batch per script call, until it is empty. The breaker and the
/// store's health see each call once, whatever its size: one slow round trip is one failure,
/// not one per decision it carried.
async fn send_lane(store: Arc<Store>, mut conn: Conn, lane: LaneId, metrics: Metrics) {
    loop {
        let batch = store.lanes.take(lane);
        if batch.is_empty() {
            return;
        }
        let Ok(permit) = store.breaker.try_acquire() else {
            answer(batch, Err(StoreError::Unavailable));
            continue;
        };
        metrics.limit_store_batch.observe(batch.len() as f64);
        let mut inv = DECIDE.prepare_invoke();
        inv.arg(batch.len());
        for p in &batch {
            inv.arg(p.keys.len());
            for k in &p.keys {
                inv.key(k.as_slice());
            }
            for a in &p.args {
                inv.arg(*a);
            }
        }
        let result = tokio::time::timeout(store.settings.timeout, conn.invoke(&inv)).await;
        let answers = match result {
            Ok(Ok(v)) => split_reply(&v, &batch)
                .ok_or_else(|| StoreError::Error(format!("unexpected reply {v:?}"))),
            Ok(Err(e)) => Err(StoreError::Error(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        };
        store.healthy.store(answers.is_ok(), Ordering::Relaxed);
        match answers {
            Ok(answers) => {
                permit.success();
                for (p, a) in batch.into_iter().zip(answers) {
                    let _ = p.reply.send(Ok(a));
                }
            }
            Err(e) => {
                permit.failure();
                answer(batch, Err(e));
            }
        }
    }
}

/// Gives every decision of `batch` the same answer.
fn answer(batch: Vec<Pending>, a: Answer) {
    for p in batch {
        let _ = p.reply.send(a.clone());
    }
}

/// Cuts the script's reply for `batch` into one `[now, rejected, found, excess, last, …]` per
/// decision; `None` if its shape is not what `decide.lua` returns for that batch.
fn split_reply(v: &Value, batch: &[Pending]) -> Option<Vec<Vec<i64>>> {
    let ints = integers(v)?;
    let (&now, mut rest) = ints.split_first()?;
    let mut answers = Vec::with_capacity(batch.len());
    for p in batch {
        let len = 1 + 3 * p.keys.len();
        if rest.len() < len {
            return None;
        }
        let (mine, tail) = rest.split_at(len);
        let mut a = Vec::with_capacity(1 + len);
        a.push(now);
        a.extend_from_slice(mine);
        answers.push(a);
        rest = tail;
    }
    rest.is_empty().then_some(answers)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(keys: usize) -> (Pending, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let p = Pending {
            keys: vec![b"k".to_vec(); keys],
            args: vec![1000, 0, 0],
            reply: tx,
        };
        (p, rx)
    }

    #[test]
    fn the_first_decision_of_an_idle_lane_sends_the_rest_wait() {
        let lanes = Lanes::default();
        let (a, _ra) = pending(1);
        let (b, _rb) = pending(1);
        let (c, _rc) = pending(1);
        assert!(lanes.push(None, a), "idle lane: this caller sends");
        assert!(!lanes.push(None, b), "a call is on the wire: queued");
        assert!(
            lanes.push(Some(Slot::for_key("other")), c),
            "another lane is independent"
        );
        assert_eq!(lanes.take(None).len(), 2, "one batch carries both");
        assert!(lanes.take(None).is_empty(), "drained: the lane is idle");
        let (d, _rd) = pending(1);
        assert!(lanes.push(None, d), "idle again: the next caller sends");
    }

    #[test]
    fn callers_that_gave_up_are_not_sent() {
        let lanes = Lanes::default();
        let (a, ra) = pending(1);
        let (b, _rb) = pending(1);
        lanes.push(None, a);
        lanes.push(None, b);
        drop(ra);
        assert_eq!(lanes.take(None).len(), 1);
    }

    #[test]
    fn a_batch_is_at_most_max_batch() {
        let lanes = Lanes::default();
        let mut rxs = Vec::new();
        for _ in 0..MAX_BATCH + 3 {
            let (p, rx) = pending(1);
            lanes.push(None, p);
            rxs.push(rx);
        }
        assert_eq!(lanes.take(None).len(), MAX_BATCH);
        assert_eq!(lanes.take(None).len(), 3);
        assert!(lanes.take(None).is_empty());
    }

    #[test]
    fn lanes_are_hash_tags_on_a_cluster_and_one_lane_standalone() {
        let keys = vec![b"gwlr:{ip:10.0.0.1}:z".to_vec(), b"x".to_vec()];
        assert_eq!(lane_of(true, &keys), Some(Slot::for_key("ip:10.0.0.1")));
        assert_eq!(lane_of(false, &keys), None);
        // No tag, or an empty one: the whole key decides the slot.
        assert_eq!(
            lane_of(true, &[b"a{}b".to_vec()]),
            Some(Slot::for_key("a{}b"))
        );
        assert_eq!(
            lane_of(true, &[b"plain".to_vec()]),
            Some(Slot::for_key("plain"))
        );
    }

    #[test]
    fn replies_are_cut_per_decision() {
        let (a, _ra) = pending(1);
        let (b, _rb) = pending(2);
        let batch = vec![a, b];
        let ints = |v: &[i64]| Value::Array(v.iter().map(|n| Value::Int(*n)).collect());
        // now, then a: rejected + 1 limit, then b: rejected + 2 limits.
        let reply = ints(&[77, 0, 1, 5, 70, 1, 0, 0, 77, 1, 9, 60]);
        assert_eq!(
            split_reply(&reply, &batch),
            Some(vec![vec![77, 0, 1, 5, 70], vec![77, 1, 0, 0, 77, 1, 9, 60]])
        );
        // Too short, too long, or not integers: no answer is made up.
        assert_eq!(split_reply(&ints(&[77, 0, 1, 5, 70, 1]), &batch), None);
        assert_eq!(
            split_reply(&ints(&[77, 0, 1, 5, 70, 1, 0, 0, 77, 1, 9, 60, 3]), &batch),
            None
        );
        assert_eq!(split_reply(&Value::Okay, &batch), None);
    }
}
