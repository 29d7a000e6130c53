//! The reservations service's guarded Redis: every call goes through the chaos switch, a circuit
//! breaker and a hard timeout, so a dead or frozen Redis costs a request at most
//! `--redis-timeout-ms` (default 1000 ms), and nothing at all (well under 50 ms) once the breaker
//! has opened. A stopped Redis refuses connections at once, so it fails fast even before the
//! breaker opens; only a frozen or partitioned one costs the full timeout, a handful of times
//! until the breaker opens. The default timeout is deliberately loose: a busy Redis on a loaded
//! machine answering in a few hundred milliseconds must not count as a failure.
//!
//! Connection handling: one lazily connecting [`ConnectionManager`] shared by all clones, with its
//! reconnect retries cut to one so a command never waits the ~9 s of redis-rs' default reconnect
//! schedule. [`Store::connect`] never touches the network: it only parses the URL and starts a
//! background warm-up, so the service starts (and answers 503) while Redis is down, and recovers
//! by itself when Redis comes back (the manager reconnects on the next command after an I/O error;
//! the breaker lets one probe through after its open period).
//!
//! What counts as a failure for the breaker: connection errors, I/O errors and timeouts. Error
//! replies from Redis (a Lua `redis.error_reply` raised by validation, a wrong type) mean Redis is
//! healthy and answering; they are returned as [`StoreError::Redis`] and count as successes.
//!
//! Two modes (`--redis-mode`): `standalone` (one URL, one breaker: one node is one failure
//! domain) and `cluster` (`--redis-url` lists seed nodes; a redis-rs cluster connection follows
//! MOVED/ASK and failovers by itself). On a cluster every slot group of [`crate::slots`] has its
//! own breaker, chosen by the first key of the call: when one master dies, the writes of its
//! groups fail fast once their breakers open while the other shards go on, and each group
//! recovers on its own after the replica's promotion. Calls without a key (`PING`) have a breaker
//! of their own.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};
use resilience::{BreakerConfig, BreakerState, CircuitBreaker};

use crate::chaos::Chaos;
use crate::slots::{self, GROUPS};

/// Defaults of [`StoreConfig`], written once for clap and `Default`.
pub mod defaults {
    /// `--redis-timeout-ms`.
    pub const TIMEOUT_MS: u64 = 1_000;
    /// `--redis-breaker-failure-rate`.
    pub const BREAKER_FAILURE_RATE: f64 = 0.5;
    /// `--redis-breaker-min-calls`.
    pub const BREAKER_MIN_CALLS: u32 = 5;
    /// `--redis-breaker-window-ms`.
    pub const BREAKER_WINDOW_MS: u64 = 10_000;
    /// `--redis-breaker-open-ms`.
    pub const BREAKER_OPEN_MS: u64 = 5_000;
    /// `--redis-breaker-consecutive-failures`.
    pub const BREAKER_CONSECUTIVE_FAILURES: u32 = 3;
    /// `--redis-connect-timeout-ms`.
    pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
    /// `--redis-wait-ms`: a few replication round trips on a LAN; it bounds how long one `WAIT`
    /// holds up its shard's connection when the replica is slow or gone.
    pub const WAIT_MS: u64 = 20;
}

/// How the service reaches Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    /// One Redis server (`--redis-url redis://host:port`).
    #[default]
    Standalone,
    /// A Redis Cluster (`--redis-url` lists seed nodes, comma-separated).
    Cluster,
}

/// Tuning of the guarded Redis (each flag has an environment twin).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct StoreConfig {
    /// `standalone`: `--redis-url` is one server; `cluster`: it lists Redis Cluster seed nodes,
    /// comma-separated (`redis://a:7000,redis://b:7000`).
    #[arg(long, env = "REDIS_MODE", value_enum, default_value_t = RedisMode::Standalone)]
    pub redis_mode: RedisMode,
    /// Hard limit for one Redis call (command, script or pipeline), in milliseconds. Generous on
    /// purpose: a slow answer from a loaded Redis is not an outage. Fail-fast while Redis is
    /// unreachable comes from refused connections (instant) and the breaker, not from this.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = defaults::TIMEOUT_MS)]
    pub redis_timeout_ms: u64,
    /// Failure ratio over the window that opens the Redis breaker.
    #[arg(long, env = "REDIS_BREAKER_FAILURE_RATE", default_value_t = defaults::BREAKER_FAILURE_RATE)]
    pub redis_breaker_failure_rate: f64,
    /// Minimum calls in the window before the breaker judges the ratio.
    #[arg(long, env = "REDIS_BREAKER_MIN_CALLS", default_value_t = defaults::BREAKER_MIN_CALLS)]
    pub redis_breaker_min_calls: u32,
    /// Breaker sliding window, in milliseconds.
    #[arg(long, env = "REDIS_BREAKER_WINDOW_MS", default_value_t = defaults::BREAKER_WINDOW_MS)]
    pub redis_breaker_window_ms: u64,
    /// How long the breaker stays open before one probe call, in milliseconds.
    #[arg(long, env = "REDIS_BREAKER_OPEN_MS", default_value_t = defaults::BREAKER_OPEN_MS)]
    pub redis_breaker_open_ms: u64,
    /// Failures in a row that open the breaker whatever the window's ratio (0 = ratio only).
    /// Without it, Redis dying after a busy minute would have to fail as many calls as had just
    /// succeeded, each costing up to the call timeout (seen with `docker compose stop redis`).
    #[arg(long, env = "REDIS_BREAKER_CONSECUTIVE_FAILURES", default_value_t = defaults::BREAKER_CONSECUTIVE_FAILURES)]
    pub redis_breaker_consecutive_failures: u32,
    /// TCP connect timeout for (re)connections, in milliseconds.
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT_MS", default_value_t = defaults::CONNECT_TIMEOUT_MS)]
    pub redis_connect_timeout_ms: u64,
    /// Cluster mode: after a write that must survive a failover (a hold, a confirmation), wait up
    /// to this long (`WAIT 1 <ms>` on the shard) for its replica to have it; 0 = do not wait.
    /// Replication stays asynchronous: this narrows the loss window, it does not close it. A
    /// slot group whose `WAIT` finds no replica skips it for a second.
    #[arg(long, env = "REDIS_WAIT_MS", default_value_t = defaults::WAIT_MS)]
    pub redis_wait_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_mode: RedisMode::Standalone,
            redis_timeout_ms: defaults::TIMEOUT_MS,
            redis_breaker_failure_rate: defaults::BREAKER_FAILURE_RATE,
            redis_breaker_min_calls: defaults::BREAKER_MIN_CALLS,
            redis_breaker_window_ms: defaults::BREAKER_WINDOW_MS,
            redis_breaker_open_ms: defaults::BREAKER_OPEN_MS,
            redis_breaker_consecutive_failures: defaults::BREAKER_CONSECUTIVE_FAILURES,
            redis_connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            redis_wait_ms: defaults::WAIT_MS,
        }
    }
}

impl StoreConfig {
    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }

    fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_rate: self.redis_breaker_failure_rate.clamp(0.01, 1.0),
            min_requests: self.redis_breaker_min_calls.max(1),
            window: Duration::from_millis(self.redis_breaker_window_ms.max(10)),
            open_for: Duration::from_millis(self.redis_breaker_open_ms.max(1)),
            consecutive_failures: self.redis_breaker_consecutive_failures,
        }
    }
}

/// Why a store call did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis was not asked: chaos `inventoryDown`, breaker open, or no connection could be made.
    /// Nothing was written.
    #[error("inventory store unavailable, retry after {retry_after_secs} s")]
    Unavailable {
        /// Suggested `Retry-After`, whole seconds, at least 1.
        retry_after_secs: u64,
    },
    /// No answer within the timeout: the command may or may not have run on the server.
    #[error("inventory store timed out")]
    Timeout,
    /// Redis answered with an error reply (e.g. a Lua `error_reply`), or the connection broke
    /// mid-command (see [`StoreError::outcome_unknown`]).
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

impl StoreError {
    /// True when the command may have run on the server although no answer came back (timeout, or
    /// the connection dropped mid-command). Writes must then be retried idempotently or checked.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => false,
            StoreError::Timeout => true,
            StoreError::Redis(e) => is_infrastructure_failure(e) && !e.is_connection_refusal(),
        }
    }

    /// `Retry-After` seconds suitable for a 503 answer (1 unless the breaker says more).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            StoreError::Unavailable { retry_after_secs } => (*retry_after_secs).max(1),
            _ => 1,
        }
    }

    /// The error reply text of a Redis error reply (e.g. the message a Lua script raised with
    /// `redis.error_reply("SEAT_TAKEN ...")`), if this is one.
    pub fn reply_message(&self) -> Option<String> {
        match self {
            StoreError::Redis(e) if !is_infrastructure_failure(e) => {
                let code = e.code().unwrap_or_default();
                let detail = e.detail().unwrap_or_default();
                Some(format!("{code} {detail}").trim().to_owned())
            }
            _ => None,
        }
    }
}

/// Whether an error says Redis is unreachable or unhealthy (as opposed to an error reply).
fn is_infrastructure_failure(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(S::BusyLoading)
                | ErrorKind::Server(S::MasterDown)
                | ErrorKind::Server(S::ClusterDown)
                | ErrorKind::Server(S::TryAgain)
                // The cluster is moving the slot (a failover, a reshard) and the client ran out of
                // redirections: not an answer, try again shortly.
                | ErrorKind::Server(S::Moved)
                | ErrorKind::Server(S::Ask)
        )
}

/// The shared connection of either mode.
#[derive(Clone)]
pub enum Conn {
    /// Standalone: a reconnecting multiplexed connection.
    Single(ConnectionManager),
    /// Standalone: a dedicated multiplexed connection (no reconnects).
    Multiplexed(MultiplexedConnection),
    /// Cluster: one multiplexed connection per node, slot-aware.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How connections are made in each mode.
enum Target {
    Single {
        client: redis::Client,
        manager: ConnectionManager,
    },
    Cluster {
        client: Box<ClusterClient>,
        /// Made on first use (connecting needs the network; [`Store::connect`] must not), and
        /// made anew by [`monitor`] when a slot group stays unreachable ([`REMAKE_AFTER`]).
        conn: parking_lot::RwLock<Option<ClusterConnection>>,
        /// Held while the connection is being made.
        connecting: tokio::sync::Mutex<()>,
        seeds: Vec<String>,
    },
}

struct Inner {
    target: Target,
    /// Per slot group: skip `WAIT` until then (ms since the epoch), see
    /// [`Store::wait_for_replica`].
    no_replica_until: [AtomicU64; GROUPS],
    /// Standalone: one. Cluster: one per slot group, then one for calls without a key.
    breakers: Vec<Arc<CircuitBreaker>>,
    chaos: Arc<Chaos>,
    cfg: StoreConfig,
}

/// Guarded Redis access for the reservations service. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("breaker", &self.breaker_state())
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

/// Splits `--redis-url` into its URLs (comma-separated, blanks ignored).
pub fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Store {
    /// Prepares the store without waiting for Redis: only a malformed URL fails. Must be called
    /// inside a Tokio runtime (it spawns a background warm-up `PING`).
    pub fn connect(url: &str, cfg: StoreConfig, chaos: Arc<Chaos>) -> Result<Store, StoreError> {
        let (target, breakers) = match cfg.redis_mode {
            RedisMode::Standalone => (single_target(url, &cfg)?, 1),
            RedisMode::Cluster => (cluster_target(url, &cfg)?, GROUPS + 1),
        };
        let store = Store {
            inner: Arc::new(Inner {
                target,
                no_replica_until: std::array::from_fn(|_| AtomicU64::new(0)),
                breakers: (0..breakers)
                    .map(|_| CircuitBreaker::new(cfg.breaker()))
                    .collect(),
                chaos,
                cfg,
            }),
        };
        let warm = store.clone();
        tokio::spawn(async move {
            let ping = redis::cmd("PING");
            let wait = warm.connect_timeout() * 2;
            match tokio::time::timeout(wait, warm.unguarded::<String>(&ping)).await {
                Ok(Ok(_)) => tracing::info!("redis connected"),
                Ok(Err(e)) => tracing::warn!(error = %e, "redis not reachable yet"),
                Err(_) => tracing::warn!("redis not answering yet"),
            }
        });
        tokio::spawn(monitor(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Runs a Lua script: `EVALSHA`, and on `NOSCRIPT` loads it and retries (redis-rs does it;
    /// on a cluster on the node of the first key).
    pub async fn invoke_script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let route = keys.first().map(String::as_str);
        self.guarded(route, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.guarded(first_key(cmd), |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    /// Runs a pipeline (or `MULTI`/`EXEC` transaction). On a cluster every key of a pipeline
    /// must be in one slot. Pipelines do not reload scripts on `NOSCRIPT`: use
    /// [`Store::invoke_script`] for scripts.
    pub async fn pipeline<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, StoreError> {
        let route = p.cmd_iter().next().and_then(first_key);
        self.guarded(
            route,
            |mut conn| async move { p.query_async(&mut conn).await },
        )
        .await
    }

    /// Cluster mode: `WAIT 1 <--redis-wait-ms>` on the master of `key`'s slot, after a write that
    /// must survive a failover. Returns how many replicas acknowledged it (`None`: not asked).
    /// Best effort: the write itself is done, so a failure is only logged.
    ///
    /// `WAIT` blocks the connection it is sent on, and it must be sent on the connection that
    /// wrote (it covers that connection's writes), which is the node's one multiplexed
    /// connection: every command behind it waits too. With a healthy replica that is one
    /// replication round trip; with none it is the whole timeout, for every `WAIT` in the
    /// queue (seen: a shard whose replica had just been promoted answered in seconds, and a
    /// master rejoining as replica stalled its shard long enough to open the breaker). So the
    /// timeout is short, `WAIT` bypasses the breaker, and once a `WAIT` of a slot group finds no
    /// replica (or fails) the group skips `WAIT` for [`NO_REPLICA_BACKOFF`], logging it.
    pub async fn wait_for_replica(&self, key: &str) -> Option<i64> {
        let wait_ms = self.inner.cfg.redis_wait_ms;
        if self.mode() != RedisMode::Cluster || wait_ms == 0 {
            return None;
        }
        let group = slots::group_of_key(key);
        let skip = &self.inner.no_replica_until[group];
        if now_ms() < skip.load(Ordering::Relaxed) {
            return None;
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(1).arg(wait_ms);
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slots::key_slot(key),
            SlotAddr::Master,
        )));
        let call = async {
            match self.conn().await? {
                Conn::Cluster(mut c) => {
                    redis::from_redis_value::<i64>(c.route_command(cmd, route).await?)
                        .map_err(RedisError::from)
                }
                mut other => cmd.query_async(&mut other).await,
            }
        };
        let acked = tokio::time::timeout(self.timeout(), call).await;
        match acked {
            Ok(Ok(n)) if n > 0 => Some(n),
            other => {
                let why = match other {
                    Ok(Ok(_)) => "no replica acknowledged in time".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                let backoff = NO_REPLICA_BACKOFF.as_millis() as u64;
                skip.store(now_ms() + backoff, Ordering::Relaxed);
                tracing::warn!(group, wait_ms, why = %why, backoff_ms = backoff, "WAIT found no replica: writes of this slot group are not known to be replicated; a failover now could lose them");
                Some(0)
            }
        }
    }

    /// `PING` through the guard: `Ok` when Redis answers (for `/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// The mode in force.
    pub fn mode(&self) -> RedisMode {
        self.inner.cfg.redis_mode
    }

    /// False while chaos `inventoryDown` is on or any breaker is open.
    pub fn is_available(&self) -> bool {
        !self.inner.chaos.inventory_down() && self.breaker_state() != BreakerState::Open
    }

    /// The worst state over the breakers (for metrics and status pages): `Open` if any is open.
    pub fn breaker_state(&self) -> BreakerState {
        let states = self.inner.breakers.iter().map(|b| b.state());
        let mut worst = BreakerState::Closed;
        for s in states {
            match s {
                BreakerState::Open => return BreakerState::Open,
                BreakerState::HalfOpen => worst = BreakerState::HalfOpen,
                BreakerState::Closed => {}
            }
        }
        worst
    }

    /// The per-call timeout in force.
    pub fn timeout(&self) -> Duration {
        self.inner.cfg.timeout()
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.redis_connect_timeout_ms.max(1))
    }

    /// A new dedicated connection, outside the breaker and the shared connection, for blocking
    /// commands such as `XREADGROUP ... BLOCK`. `response_timeout` must exceed the block time
    /// (`None`: wait forever). Connecting is bounded by the connect timeout.
    pub async fn dedicated_connection(
        &self,
        response_timeout: Option<Duration>,
    ) -> Result<Conn, StoreError> {
        let connect_timeout = self.connect_timeout();
        let made = match &self.inner.target {
            Target::Single { client, .. } => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(response_timeout);
                let connecting = client.get_multiplexed_async_connection_with_config(&cfg);
                tokio::time::timeout(connect_timeout * 2, async {
                    connecting.await.map(Conn::Multiplexed)
                })
                .await
            }
            Target::Cluster { seeds, .. } => {
                let client = cluster_client(seeds, &self.inner.cfg, response_timeout)?;
                tokio::time::timeout(connect_timeout * 2, async {
                    client.get_async_connection().await.map(Conn::Cluster)
                })
                .await
            }
        };
        match made {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) if e.is_connection_refusal() => Err(StoreError::Unavailable {
                retry_after_secs: 1,
            }),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// The shared connection (made on first use on a cluster).
    async fn conn(&self) -> RedisResult<Conn> {
        match &self.inner.target {
            Target::Single { manager, .. } => Ok(Conn::Single(manager.clone())),
            Target::Cluster {
                client,
                conn,
                connecting,
                ..
            } => {
                if let Some(c) = conn.read().clone() {
                    return Ok(Conn::Cluster(c));
                }
                let _making = connecting.lock().await;
                if let Some(c) = conn.read().clone() {
                    return Ok(Conn::Cluster(c));
                }
                make_cluster_connection(client, conn)
                    .await
                    .map(Conn::Cluster)
            }
        }
    }

    /// Cluster mode: makes the shared connection anew from the seed nodes, so that it learns
    /// the topology afresh (bounded by twice the connect timeout). Calls in flight finish on the
    /// old one.
    ///
    /// Why: redis-rs refreshes its slot map on `MOVED` and on some connection errors, but a
    /// command for a node it is still reconnecting to (a killed master, whose replica has been
    /// promoted since) only fails, with no refresh. A process that sent nothing to the shard
    /// while it failed over (payments, whose charges stop while holds fail) then kept failing
    /// there for 15–20 s after the promotion in the compose failover drill.
    async fn remake_connection(&self) -> bool {
        let Target::Cluster {
            client,
            conn,
            connecting,
            ..
        } = &self.inner.target
        else {
            return false;
        };
        let Ok(_making) = connecting.try_lock() else {
            return false;
        };
        let making = make_cluster_connection(client, conn);
        match tokio::time::timeout(self.connect_timeout() * 2, making).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "making the cluster connection anew failed");
                false
            }
            Err(_) => false,
        }
    }

    /// The breaker guarding calls whose first key is `route`.
    fn breaker(&self, route: Option<&str>) -> &Arc<CircuitBreaker> {
        let breakers = &self.inner.breakers;
        let i = match (breakers.len(), route) {
            (1, _) => 0,
            (_, Some(key)) => slots::group_of_key(key),
            (_, None) => GROUPS,
        };
        &breakers[i.min(breakers.len() - 1)]
    }

    /// One call outside the breakers and chaos (warm-up and background probes).
    async fn unguarded<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn).await
    }

    async fn guarded<'a, T, F, Fut>(&'a self, route: Option<&str>, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>> + 'a,
    {
        if self.inner.chaos.inventory_down() {
            return Err(StoreError::Unavailable {
                retry_after_secs: 1,
            });
        }
        let permit = self
            .breaker(route)
            .try_acquire()
            .map_err(|open| StoreError::Unavailable {
                retry_after_secs: open.retry_after.as_secs_f64().ceil().max(1.0) as u64,
            })?;
        let call = async move { op(self.conn().await?).await };
        match tokio::time::timeout(self.timeout(), call).await {
            Err(_) => {
                permit.failure();
                tracing::warn!(
                    timeout_ms = self.inner.cfg.redis_timeout_ms,
                    route = route.unwrap_or(""),
                    "redis call timed out"
                );
                Err(StoreError::Timeout)
            }
            Ok(Ok(v)) => {
                permit.success();
                Ok(v)
            }
            Ok(Err(e)) if is_infrastructure_failure(&e) => {
                permit.failure();
                tracing::warn!(error = %e, route = route.unwrap_or(""), "redis call failed");
                if e.is_connection_refusal() {
                    Err(StoreError::Unavailable {
                        retry_after_secs: 1,
                    })
                } else {
                    Err(StoreError::Redis(e))
                }
            }
            Ok(Err(e)) => {
                // Redis answered: it is healthy, the request was refused.
                permit.success();
                Err(StoreError::Redis(e))
            }
        }
    }
}

/// The first key of a command (its second argument), if it is text.
fn first_key(cmd: &Cmd) -> Option<&str> {
    match cmd.args_iter().nth(1)? {
        redis::Arg::Simple(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

fn single_target(url: &str, cfg: &StoreConfig) -> Result<Target, StoreError> {
    let client = redis::Client::open(url)?;
    let manager_cfg = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
        .set_connection_timeout(Some(Duration::from_millis(
            cfg.redis_connect_timeout_ms.max(1),
        )))
        // Our own timeout bounds every call; this one only reaps a wedged connection.
        .set_response_timeout(Some(cfg.timeout().max(Duration::from_secs(1))));
    let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg)?;
    Ok(Target::Single { client, manager })
}

/// Makes a cluster connection (learning the topology from the seed nodes) and makes it the
/// shared one. The caller holds the `connecting` lock.
async fn make_cluster_connection(
    client: &ClusterClient,
    conn: &parking_lot::RwLock<Option<ClusterConnection>>,
) -> RedisResult<ClusterConnection> {
    let c = client.get_async_connection().await?;
    *conn.write() = Some(c.clone());
    Ok(c)
}

fn cluster_target(urls: &str, cfg: &StoreConfig) -> Result<Target, StoreError> {
    let seeds = split_urls(urls);
    let client = cluster_client(&seeds, cfg, Some(cfg.timeout().max(Duration::from_secs(1))))?;
    Ok(Target::Cluster {
        client: Box::new(client),
        conn: parking_lot::RwLock::new(None),
        connecting: tokio::sync::Mutex::new(()),
        seeds,
    })
}

/// A cluster client over `seeds`. Few, short internal retries: our own timeout and breakers
/// decide; the retries only ride over a MOVED after a failover or a slot refresh.
fn cluster_client(
    seeds: &[String],
    cfg: &StoreConfig,
    response_timeout: Option<Duration>,
) -> Result<ClusterClient, StoreError> {
    if seeds.is_empty() {
        return Err(StoreError::Redis(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "--redis-url lists no seed node",
        ))));
    }
    let mut b = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(Duration::from_millis(cfg.redis_connect_timeout_ms.max(1)))
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if let Some(t) = response_timeout {
        b = b.response_timeout(t);
    }
    Ok(b.build()?)
}

/// How long a slot group skips `WAIT` after one found no replica.
pub const NO_REPLICA_BACKOFF: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How often [`monitor`] looks at breakers that are not closed.
const MONITOR_EVERY: Duration = Duration::from_millis(250);
/// Cluster mode: a slot group whose probes have failed this long makes [`monitor`] make the
/// shared connection anew (at most this often), see [`Store::remake_connection`].
const REMAKE_AFTER: Duration = Duration::from_secs(1);

/// Background recovery, independent of traffic: for each breaker that is not closed, probe its
/// part of Redis outside the breaker (standalone: `PING`, which also makes the connection
/// manager reconnect; cluster: a read of a key in the breaker's slot group, so it reaches the
/// node now owning those slots), and once the open period is over use the half-open probe
/// permit for it, so the breaker closes within [`MONITOR_EVERY`] of Redis answering again. On a
/// cluster, a group whose probes keep failing for [`REMAKE_AFTER`] gets the connection made anew
/// (a replica may have been promoted that the old connection does not know of). Ends when the
/// last [`Store`] clone is dropped.
async fn monitor(store: std::sync::Weak<Inner>) {
    let mut failing_since: Vec<Option<Instant>> = Vec::new();
    let mut remade_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(MONITOR_EVERY).await;
        let Some(inner) = store.upgrade() else { return };
        if inner.chaos.inventory_down() {
            continue;
        }
        let store = Store { inner };
        failing_since.resize(store.inner.breakers.len(), None);
        for (i, breaker) in store.inner.breakers.iter().enumerate() {
            let state = breaker.state();
            if state == BreakerState::Closed {
                failing_since[i] = None;
                continue;
            }
            let permit = if state == BreakerState::HalfOpen {
                breaker.try_acquire().ok()
            } else {
                None
            };
            let probe = probe_cmd(store.inner.breakers.len(), i);
            let ok = matches!(
                tokio::time::timeout(store.timeout(), store.unguarded::<Value>(&probe)).await,
                Ok(Ok(_))
            );
            failing_since[i] = if ok {
                None
            } else {
                failing_since[i].or(Some(Instant::now()))
            };
            match (permit, ok) {
                (Some(p), true) => {
                    p.success();
                    tracing::info!(breaker = i, "redis is back, breaker closed");
                }
                (Some(p), false) => p.failure(),
                (None, _) => {}
            }
        }
        let stuck = failing_since
            .iter()
            .flatten()
            .any(|t| t.elapsed() >= REMAKE_AFTER);
        if stuck
            && store.mode() == RedisMode::Cluster
            && remade_at.is_none_or(|t| t.elapsed() >= REMAKE_AFTER)
        {
            remade_at = Some(Instant::now());
            if store.remake_connection().await {
                tracing::info!("a slot group stays unreachable: cluster connection made anew from the seed nodes");
            }
        }
    }
}

/// The probe of breaker `i` of `n`: `PING`, or on a cluster `EXISTS` of a key in group `i`.
fn probe_cmd(n: usize, i: usize) -> Cmd {
    if n == 1 || i >= GROUPS {
        return redis::cmd("PING");
    }
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(format!("probe:{{{}}}", slots::group_tag(i)));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_clap_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            store: StoreConfig,
        }
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.store, StoreConfig::default());
    }

    #[test]
    fn error_reply_is_not_an_infrastructure_failure() {
        let e = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "x",
        ));
        assert!(!is_infrastructure_failure(&e));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_infrastructure_failure(&io));
        assert!(!StoreError::Redis(io).outcome_unknown());
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(StoreError::Redis(reset).outcome_unknown());
    }
}
