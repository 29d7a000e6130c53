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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisError, RedisResult};
use resilience::{BreakerConfig, BreakerState, CircuitBreaker};

use crate::chaos::Chaos;

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
}

/// Tuning of the guarded Redis (each flag has an environment twin).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct StoreConfig {
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            redis_timeout_ms: defaults::TIMEOUT_MS,
            redis_breaker_failure_rate: defaults::BREAKER_FAILURE_RATE,
            redis_breaker_min_calls: defaults::BREAKER_MIN_CALLS,
            redis_breaker_window_ms: defaults::BREAKER_WINDOW_MS,
            redis_breaker_open_ms: defaults::BREAKER_OPEN_MS,
            redis_breaker_consecutive_failures: defaults::BREAKER_CONSECUTIVE_FAILURES,
            redis_connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
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
        )
}

struct Inner {
    client: redis::Client,
    manager: ConnectionManager,
    breaker: Arc<CircuitBreaker>,
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

impl Store {
    /// Prepares the store without waiting for Redis: only a malformed URL fails. Must be called
    /// inside a Tokio runtime (it spawns a background warm-up `PING`).
    pub fn connect(url: &str, cfg: StoreConfig, chaos: Arc<Chaos>) -> Result<Store, StoreError> {
        let client = redis::Client::open(url)?;
        let connect_timeout = Duration::from_millis(cfg.redis_connect_timeout_ms.max(1));
        let manager_cfg = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(connect_timeout))
            // Our own timeout bounds every call; this one only reaps a wedged connection.
            .set_response_timeout(Some(cfg.timeout().max(Duration::from_secs(1))));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg)?;
        let store = Store {
            inner: Arc::new(Inner {
                client,
                manager,
                breaker: CircuitBreaker::new(cfg.breaker()),
                chaos,
                cfg,
            }),
        };
        let warm = store.inner.manager.clone();
        tokio::spawn(async move {
            let mut conn = warm;
            let ping = redis::cmd("PING");
            match tokio::time::timeout(connect_timeout * 2, ping.query_async::<String>(&mut conn))
                .await
            {
                Ok(Ok(_)) => tracing::info!("redis connected"),
                Ok(Err(e)) => tracing::warn!(error = %e, "redis not reachable yet"),
                Err(_) => tracing::warn!("redis not answering yet"),
            }
        });
        tokio::spawn(monitor(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Runs a Lua script: `EVALSHA`, and on `NOSCRIPT` loads it and retries (redis-rs does it).
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
        self.guarded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.guarded(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline (or `MULTI`/`EXEC` transaction). Pipelines do not reload scripts on
    /// `NOSCRIPT`: use [`Store::invoke_script`] for scripts.
    pub async fn pipeline<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, StoreError> {
        self.guarded(|mut conn| async move { p.query_async(&mut conn).await })
            .await
    }

    /// `PING` through the guard: `Ok` when Redis answers (for `/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// False while chaos `inventoryDown` is on or the breaker is open: calls would fail fast.
    pub fn is_available(&self) -> bool {
        !self.inner.chaos.inventory_down() && self.breaker_state() != BreakerState::Open
    }

    /// The Redis breaker's state (for metrics and status pages).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The per-call timeout in force.
    pub fn timeout(&self) -> Duration {
        self.inner.cfg.timeout()
    }

    /// A new dedicated connection, outside the breaker and the shared connection, for blocking
    /// commands such as `XREADGROUP ... BLOCK`. `response_timeout` must exceed the block time
    /// (`None`: wait forever). Connecting is bounded by the connect timeout.
    pub async fn dedicated_connection(
        &self,
        response_timeout: Option<Duration>,
    ) -> Result<MultiplexedConnection, StoreError> {
        dedicated_connection(
            &self.inner.client,
            Duration::from_millis(self.inner.cfg.redis_connect_timeout_ms.max(1)),
            response_timeout,
        )
        .await
    }

    async fn guarded<'a, T, F, Fut>(&'a self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + 'a,
    {
        if self.inner.chaos.inventory_down() {
            return Err(StoreError::Unavailable {
                retry_after_secs: 1,
            });
        }
        let permit = self
            .inner
            .breaker
            .try_acquire()
            .map_err(|open| StoreError::Unavailable {
                retry_after_secs: open.retry_after.as_secs_f64().ceil().max(1.0) as u64,
            })?;
        let conn = self.inner.manager.clone();
        match tokio::time::timeout(self.timeout(), op(conn)).await {
            Err(_) => {
                permit.failure();
                tracing::warn!(
                    timeout_ms = self.inner.cfg.redis_timeout_ms,
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
                tracing::warn!(error = %e, "redis call failed");
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

/// How often [`monitor`] looks at a breaker that is not closed.
const MONITOR_EVERY: Duration = Duration::from_millis(250);

/// Background recovery, independent of traffic: while the breaker is not closed, `PING` Redis
/// outside the breaker (each failure makes the connection manager start a fresh reconnect, so the
/// connection is ready when Redis returns), and once the open period is over use the half-open
/// probe permit for a `PING`, so the breaker closes within [`MONITOR_EVERY`] of Redis answering
/// again. Ends when the last [`Store`] clone is dropped.
async fn monitor(store: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(MONITOR_EVERY).await;
        let Some(inner) = store.upgrade() else { return };
        let state = inner.breaker.state();
        if state == BreakerState::Closed || inner.chaos.inventory_down() {
            continue;
        }
        let permit = if state == BreakerState::HalfOpen {
            inner.breaker.try_acquire().ok()
        } else {
            None
        };
        let mut conn = inner.manager.clone();
        let ping = redis::cmd("PING");
        let ok = matches!(
            tokio::time::timeout(inner.cfg.timeout(), ping.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        );
        match (permit, ok) {
            (Some(p), true) => {
                p.success();
                tracing::info!("redis is back, breaker closed");
            }
            (Some(p), false) => p.failure(),
            (None, _) => {}
        }
    }
}

/// Opens a multiplexed connection with the given timeouts (used by [`Store`] and the outbox).
pub async fn dedicated_connection(
    client: &redis::Client,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, StoreError> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(response_timeout);
    match tokio::time::timeout(
        connect_timeout * 2,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) if e.is_connection_refusal() => Err(StoreError::Unavailable {
            retry_after_secs: 1,
        }),
        Ok(Err(e)) => Err(StoreError::Redis(e)),
        Err(_) => Err(StoreError::Timeout),
    }
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
