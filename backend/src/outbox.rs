//! The notification outbox worker: delivers what the confirming Lua script `XADD`ed to the Redis
//! streams (one per slot group, [`stream`]) to the notifications service, at least once, without
//! ever blocking or failing a reservation.
//!
//! One loop per stream and reservations process (consumer name unique per process); the streams
//! are sharded with the saga keys (on a Redis Cluster each stream lives on its group's shard, so a
//! failed shard only holds up its own streams). Each loop:
//!
//! 1. connect (own connection, with backoff while Redis is away) and make sure consumer group
//!    [`GROUP`] exists (`XGROUP CREATE ... 0 MKSTREAM`, `BUSYGROUP` ignored; starting at `0`
//!    so entries written before any worker ran are delivered too);
//! 2. first re-read this consumer's own unacknowledged entries (`XREADGROUP ... 0`), then
//!    periodically take over entries idle longer than `--outbox-claim-idle-ms` from dead consumers
//!    (`XAUTOCLAIM`), and otherwise wait for new ones (`XREADGROUP ... BLOCK ... >`);
//! 3. POST the round's entries, each as `{reservationId, userEmail, kind, message}`, in one
//!    `/notifications/batch` request (at most [`MAX_BATCH`] per request; a notifications service
//!    without that endpoint gets one `POST /notifications` per entry). Transient failures
//!    (connection errors, timeouts, any non-2xx answer except 400/413/422, for the request or an
//!    item) are retried together with capped exponential backoff and jitter for as long as each
//!    entry is younger than `--outbox-give-up-ms`; 400/413/422 for an item (the message itself is
//!    invalid) are permanent;
//! 4. on success set `notification`=`sent` on the reservation (only if that hash exists),
//!    on giving up set it to `failed`; then `XACK` and `XDEL` the entries (the stream only holds
//!    what is not delivered yet, so its length is the backlog): one script call for the whole
//!    round (`outbox_done.lua`), since the stream and its reservations share a slot group.
//!
//! Per round that is one HTTP request and two Redis calls (the read and the script), whatever
//! the number of entries: the worker's cost per notification falls as load rises.
//!
//! Redelivery (after a crash between POST and XACK, or two consumers retrying the same old entry)
//! is harmless: notifications is idempotent on `(reservationId, kind)`. If the stream or group
//! vanished (Redis restarted empty) the group is recreated on `NOGROUP`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge, Registry};
use rand::Rng;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::RedisError;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::notifications::MAX_BATCH;
use crate::reservations::inventory::{mark_notification_script, outbox_done_script};
use crate::reservations::keys;
use crate::slots::{Group, GROUPS};
use crate::store::{Conn, Store, StoreError};

/// The outbox stream of slot group `g` (the confirming script of an event in `g` writes to it).
pub fn stream(g: Group) -> String {
    keys::outbox(g)
}
/// The consumer group of the delivery workers.
pub const GROUP: &str = "notifier";
/// Default `kind` when an entry has none.
const DEFAULT_KIND: &str = "reservation_confirmed";

/// Defaults of [`OutboxConfig`], written once for clap and `Default`.
pub mod defaults {
    /// `--notifications-url`.
    pub const NOTIFICATIONS_URL: &str = "http://127.0.0.1:3003";
    /// `--outbox-block-ms`.
    pub const BLOCK_MS: u64 = 2_000;
    /// `--outbox-batch`.
    pub const BATCH: usize = 32;
    /// `--outbox-attempt-timeout-ms`.
    pub const ATTEMPT_TIMEOUT_MS: u64 = 2_000;
    /// `--outbox-backoff-ms`.
    pub const BACKOFF_MS: u64 = 200;
    /// `--outbox-max-backoff-ms`.
    pub const MAX_BACKOFF_MS: u64 = 10_000;
    /// `--outbox-claim-idle-ms`.
    pub const CLAIM_IDLE_MS: u64 = 30_000;
    /// `--outbox-give-up-ms`.
    pub const GIVE_UP_MS: u64 = 3_600_000;
}

/// Flags of the outbox worker (each has an environment twin).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct OutboxConfig {
    /// Base URL of the notifications service.
    #[arg(
        long,
        env = "NOTIFICATIONS_URL",
        default_value = defaults::NOTIFICATIONS_URL
    )]
    pub notifications_url: String,
    /// How long one `XREADGROUP` waits for new entries, in milliseconds.
    #[arg(long, env = "OUTBOX_BLOCK_MS", default_value_t = defaults::BLOCK_MS)]
    pub outbox_block_ms: u64,
    /// Entries read per round (delivered together in one `POST /notifications/batch`).
    #[arg(long, env = "OUTBOX_BATCH", default_value_t = defaults::BATCH)]
    pub outbox_batch: usize,
    /// Time limit of one delivery attempt, in milliseconds.
    #[arg(long, env = "OUTBOX_ATTEMPT_TIMEOUT_MS", default_value_t = defaults::ATTEMPT_TIMEOUT_MS)]
    pub outbox_attempt_timeout_ms: u64,
    /// First retry delay, in milliseconds (doubles per retry, with jitter).
    #[arg(long, env = "OUTBOX_BACKOFF_MS", default_value_t = defaults::BACKOFF_MS)]
    pub outbox_backoff_ms: u64,
    /// Longest retry delay, in milliseconds (also caps Redis reconnect delays).
    #[arg(long, env = "OUTBOX_MAX_BACKOFF_MS", default_value_t = defaults::MAX_BACKOFF_MS)]
    pub outbox_max_backoff_ms: u64,
    /// Entries left unacknowledged this long by another consumer are taken over, in milliseconds.
    #[arg(long, env = "OUTBOX_CLAIM_IDLE_MS", default_value_t = defaults::CLAIM_IDLE_MS)]
    pub outbox_claim_idle_ms: u64,
    /// An entry still undeliverable at this age is given up and marked `failed`, in milliseconds.
    #[arg(long, env = "OUTBOX_GIVE_UP_MS", default_value_t = defaults::GIVE_UP_MS)]
    pub outbox_give_up_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            notifications_url: defaults::NOTIFICATIONS_URL.into(),
            outbox_block_ms: defaults::BLOCK_MS,
            outbox_batch: defaults::BATCH,
            outbox_attempt_timeout_ms: defaults::ATTEMPT_TIMEOUT_MS,
            outbox_backoff_ms: defaults::BACKOFF_MS,
            outbox_max_backoff_ms: defaults::MAX_BACKOFF_MS,
            outbox_claim_idle_ms: defaults::CLAIM_IDLE_MS,
            outbox_give_up_ms: defaults::GIVE_UP_MS,
        }
    }
}

/// Counters and gauges of the worker. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    /// `outbox_delivered_total`: entries delivered (2xx from notifications).
    pub delivered: IntCounter,
    /// `outbox_delivery_retries_total`: failed attempts that will be retried.
    pub retries: IntCounter,
    /// `outbox_failed_total`: entries given up (marked `failed`).
    pub failed: IntCounter,
    /// `outbox_pending`: entries not yet delivered (stream length after acked ones are deleted).
    pub pending: IntGauge,
}

impl OutboxMetrics {
    /// Creates the metrics without registering them anywhere.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            delivered: IntCounter::new("outbox_delivered_total", "Outbox entries delivered")?,
            retries: IntCounter::new(
                "outbox_delivery_retries_total",
                "Outbox delivery attempts that failed and will be retried",
            )?,
            failed: IntCounter::new("outbox_failed_total", "Outbox entries given up")?,
            pending: IntGauge::new("outbox_pending", "Outbox entries not yet delivered")?,
        })
    }

    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::new()?;
        registry.register(Box::new(m.delivered.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.failed.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        Ok(m)
    }
}

/// Starts the worker with metrics registered nowhere; see [`spawn_worker_with_metrics`].
pub fn spawn_worker(
    store: Store,
    cfg: OutboxConfig,
    consumer_name: String,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    match OutboxMetrics::new() {
        Ok(metrics) => spawn_worker_with_metrics(store, cfg, consumer_name, shutdown, metrics),
        Err(e) => tokio::spawn(async move {
            tracing::error!(error = %e, "outbox worker cannot create its metrics");
        }),
    }
}

/// Starts the delivery worker as consumer `consumer_name` (unique per process, e.g. the host
/// name plus the listen port): one loop per slot group's stream, each on its own connection made
/// through `store` (same Redis, same mode). It runs until `shutdown` turns `true` (if the sender
/// is dropped it runs until the runtime ends) and never returns an error: Redis and
/// notifications outages are waited out with backoff.
pub fn spawn_worker_with_metrics(
    store: Store,
    cfg: OutboxConfig,
    consumer_name: String,
    shutdown: watch::Receiver<bool>,
    metrics: OutboxMetrics,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shared = match Shared::new(cfg, consumer_name, metrics) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(error = %e, "outbox worker cannot start");
                return;
            }
        };
        let loops = (0..GROUPS).map(|g| {
            let worker = Worker {
                shared: shared.clone(),
                store: store.clone(),
                group: g,
                stream: stream(g),
            };
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = worker.run() => {}
                    _ = stopped(&mut stop) => {}
                }
            })
        });
        futures::future::join_all(loops).await;
        tracing::info!("outbox worker stopped");
    })
}

/// Resolves when the flag turns true; never if the sender is gone without setting it.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why the worker could not be built.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Why a stream's session ended (the loop reconnects after a backoff).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("connect: {0}")]
    Connect(#[from] StoreError),
}

/// Longest message sent (notifications accepts 4096 bytes).
const MAX_MESSAGE_BYTES: usize = 4000;

/// The human text of a notification. A JSON object payload (what the reservation scripts write:
/// `{kind, reservationId, eventId, seats, quantity, amount, paymentId, ...}`) is rendered as a
/// sentence; any other payload is sent as it is; no payload gives a generic sentence.
fn render_message(
    reservation_id: &str,
    event_id: &str,
    kind: &str,
    payload: Option<&str>,
) -> String {
    let parsed = payload.and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok());
    let mut text = match (payload, parsed) {
        (_, Some(serde_json::Value::Object(o))) => {
            let what = match kind {
                "reservation_confirmed" => "is confirmed",
                "reservation_cancelled" => "was cancelled and refunded",
                _ => "was updated",
            };
            let mut s = format!("Your reservation {reservation_id} for event {event_id} {what}");
            let seats: Vec<&str> = o
                .get("seats")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            if !seats.is_empty() {
                s.push_str(&format!(" (seats {})", seats.join(", ")));
            } else if let Some(q) = o.get("quantity").and_then(|v| v.as_u64()) {
                s.push_str(&format!(" ({q} tickets)"));
            }
            if let Some(a) = o.get("amount").and_then(|v| v.as_f64()) {
                s.push_str(&format!(", amount {a:.2}"));
            }
            s.push('.');
            s
        }
        (Some(p), _) => p.to_owned(),
        (None, _) => format!("Reservation {reservation_id} for event {event_id}: {kind}"),
    };
    if text.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Answers meaning "this message itself is invalid": retrying cannot help. Anything else that is
/// not 2xx (5xx, 404 from a misrouted URL, 429, ...) may heal and is retried.
fn is_rejection(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 422)
}

/// One stream entry made ready for delivery.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    entry_id: String,
    reservation_id: Option<String>,
    user_email: String,
    kind: String,
    message: String,
}

impl Message {
    fn from_entry(e: &StreamId) -> Self {
        let field = |k: &str| e.get::<String>(k).filter(|s| !s.is_empty());
        let reservation_id = field("reservationId");
        let kind = field("kind").unwrap_or_else(|| DEFAULT_KIND.to_owned());
        let event_id = field("eventId").unwrap_or_else(|| "?".to_owned());
        let text = field("payload").or_else(|| field("message"));
        let message = render_message(
            reservation_id.as_deref().unwrap_or("?"),
            &event_id,
            &kind,
            text.as_deref(),
        );
        Self {
            entry_id: e.id.clone(),
            reservation_id,
            user_email: field("userEmail").unwrap_or_default(),
            kind,
            message,
        }
    }

    /// What notifications receives, borrowed from the message (serialized straight from it).
    fn body(&self) -> NotificationBody<'_> {
        NotificationBody {
            reservation_id: self.reservation_id.as_deref().unwrap_or_default(),
            user_email: &self.user_email,
            kind: &self.kind,
            message: &self.message,
        }
    }

    /// Age derived from the entry id's millisecond timestamp (0 if unparsable).
    fn age(&self) -> Duration {
        let ms = self
            .entry_id
            .split('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(ms))
    }
}

/// One notification as `POST /notifications` (and each batch item) takes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationBody<'a> {
    reservation_id: &'a str,
    user_email: &'a str,
    kind: &'a str,
    message: &'a str,
}

/// `POST /notifications/batch`.
#[derive(Debug, Serialize)]
struct BatchBody<'a> {
    notifications: Vec<NotificationBody<'a>>,
}

/// Result of delivering one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    Failed,
}

impl Delivery {
    /// The reservation's `notification` field after it.
    fn mark(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
        }
    }
}

/// Result of one message's delivery attempt.
#[derive(Debug, Clone)]
enum Attempt {
    Ok,
    Transient(String),
    Permanent(String),
}

impl Attempt {
    /// What an answer with `status` means for a message (`detail`: the rejection's text, made
    /// only for a rejection): 2xx delivered, 400/413/422 never deliverable, anything else worth
    /// retrying.
    fn of(status: reqwest::StatusCode, detail: impl FnOnce() -> String) -> Self {
        if status.is_success() {
            Attempt::Ok
        } else if is_rejection(status) {
            Attempt::Permanent(format!("HTTP {status}: {}", detail()))
        } else {
            Attempt::Transient(format!("HTTP {status}"))
        }
    }
}

/// What every stream's loop shares.
struct Shared {
    http: reqwest::Client,
    url: String,
    cfg: OutboxConfig,
    consumer: String,
    metrics: OutboxMetrics,
    mark: redis::Script,
    done: redis::Script,
    /// `POST /notifications/batch`.
    batch_url: String,
    /// Each stream's last known length; the `outbox_pending` gauge is their sum.
    backlog: [AtomicI64; GROUPS],
}

impl Shared {
    fn new(
        cfg: OutboxConfig,
        consumer: String,
        metrics: OutboxMetrics,
    ) -> Result<Self, SetupError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.outbox_attempt_timeout_ms.max(1)))
            .connect_timeout(Duration::from_millis(
                cfg.outbox_attempt_timeout_ms.clamp(1, 1_000),
            ))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let base = cfg.notifications_url.trim_end_matches('/');
        Ok(Self {
            http,
            url: format!("{base}/notifications"),
            batch_url: format!("{base}/notifications/batch"),
            cfg,
            consumer,
            metrics,
            mark: mark_notification_script(),
            done: outbox_done_script(),
            backlog: std::array::from_fn(|_| AtomicI64::new(0)),
        })
    }

    /// Exponential backoff with jitter for retry number `n` (1-based), capped.
    fn backoff(&self, n: u32) -> Duration {
        let base = self.cfg.outbox_backoff_ms.max(1);
        let cap = self.cfg.outbox_max_backoff_ms.max(base);
        let exp = base
            .saturating_mul(1u64 << n.saturating_sub(1).min(20))
            .min(cap);
        let jittered = rand::rng().random_range(exp / 2..=exp);
        Duration::from_millis(jittered.max(1))
    }
}

/// One stream's consumer loop.
struct Worker {
    shared: Arc<Shared>,
    store: Store,
    group: Group,
    stream: String,
}

impl std::ops::Deref for Worker {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Worker {
    /// Connects and consumes forever, reconnecting with backoff after Redis errors.
    async fn run(&self) {
        let mut failures: u32 = 0;
        loop {
            match self.session().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = self.backoff(failures);
                    tracing::warn!(error = %e, stream = %self.stream, retry_in_ms = delay.as_millis() as u64, "outbox: redis unavailable");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One connection's life: ensure the group, drain own pending entries, then loop reading.
    /// Returns on a Redis error (the caller reconnects).
    async fn session(&self) -> Result<(), SessionError> {
        let block = Duration::from_millis(self.cfg.outbox_block_ms.max(1));
        let mut conn = self
            .store
            .dedicated_connection(Some(block + Duration::from_secs(2)))
            .await?;
        self.ensure_group(&mut conn).await?;
        // Marks are sent in pipelines, which do not reload a script on NOSCRIPT: load it here.
        self.mark.load_async(&mut conn).await?;
        tracing::debug!(consumer = %self.consumer, stream = %self.stream, "outbox worker consuming");
        // Our own entries left unacknowledged by a previous life of this consumer (bounded: each
        // round acknowledges the whole batch, so this ends once the history is drained).
        for _ in 0..10_000 {
            let batch = self.read(&mut conn, "0", None).await?;
            if batch.is_empty() {
                break;
            }
            self.handle_batch(&mut conn, batch).await?;
        }
        let claim_every = Duration::from_millis((self.cfg.outbox_claim_idle_ms / 2).max(100));
        let mut next_claim = Instant::now();
        let mut claim_cursor = "0-0".to_owned();
        loop {
            if Instant::now() >= next_claim {
                let (cursor, claimed) = self.autoclaim(&mut conn, &claim_cursor).await?;
                if !claimed.is_empty() {
                    tracing::info!(count = claimed.len(), "outbox: took over idle entries");
                    self.handle_batch(&mut conn, claimed).await?;
                }
                if cursor == "0-0" {
                    next_claim = Instant::now() + claim_every;
                }
                claim_cursor = cursor;
            }
            self.update_pending(&mut conn).await?;
            let batch = self.read(&mut conn, ">", Some(block)).await?;
            self.handle_batch(&mut conn, batch).await?;
        }
    }

    async fn ensure_group(&self, conn: &mut Conn) -> Result<(), RedisError> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(()) => {
                tracing::info!("outbox: created consumer group {GROUP}");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `XREADGROUP` from `id` (`0`: own pending history; `>`: new entries, blocking).
    async fn read(
        &self,
        conn: &mut Conn,
        id: &str,
        block: Option<Duration>,
    ) -> Result<Vec<StreamId>, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.cfg.outbox_batch.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(id);
        let reply: Result<Option<StreamReadReply>, RedisError> = cmd.query_async(conn).await;
        match reply {
            Ok(r) => Ok(r
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default()),
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!("outbox: stream or group vanished, recreating");
                self.ensure_group(conn).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// `XAUTOCLAIM` entries idle longer than the claim threshold; returns the next cursor.
    async fn autoclaim(
        &self,
        conn: &mut Conn,
        cursor: &str,
    ) -> Result<(String, Vec<StreamId>), RedisError> {
        let reply: Result<StreamAutoClaimReply, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.cfg.outbox_claim_idle_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(self.cfg.outbox_batch.max(1))
            .query_async(conn)
            .await;
        match reply {
            Ok(r) => Ok((r.next_stream_id, r.claimed)),
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group(conn).await?;
                Ok(("0-0".to_owned(), Vec::new()))
            }
            Err(e) => Err(e),
        }
    }

    async fn update_pending(&self, conn: &mut Conn) -> Result<(), RedisError> {
        let len: i64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        self.backlog[self.group].store(len, Ordering::Relaxed);
        let total = self.backlog.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        self.metrics.pending.set(total);
        Ok(())
    }

    /// Delivers a round's entries, then records every outcome in Redis.
    async fn handle_batch(
        &self,
        conn: &mut Conn,
        entries: Vec<StreamId>,
    ) -> Result<(), RedisError> {
        if entries.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = entries.iter().map(Message::from_entry).collect();
        let deliveries = self.deliver_all(&messages);
        tokio::pin!(deliveries);
        // While deliveries are being retried (notifications down), keep the backlog gauge fresh.
        let mut gauge_tick = tokio::time::interval(Duration::from_secs(1));
        gauge_tick.tick().await;
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut deliveries => break outcomes,
                _ = gauge_tick.tick() => {
                    if let Err(e) = self.update_pending(conn).await {
                        tracing::debug!(error = %e, "outbox: cannot read backlog");
                    }
                }
            }
        };
        self.finish(conn, &messages, &outcomes).await
    }

    /// Records the outcomes on the reservations and acknowledges the entries: one script call
    /// for the stream's own group (every entry written by a confirmation is there), plus one
    /// pipelined mark per reservation of another group (only hand-written entries).
    async fn finish(
        &self,
        conn: &mut Conn,
        messages: &[Message],
        outcomes: &[Delivery],
    ) -> Result<(), RedisError> {
        // The same reservation may appear twice in a round (redelivery): keep one mark per id,
        // "sent" winning over "failed".
        let mut marks: HashMap<&str, Delivery> = HashMap::new();
        for (m, outcome) in messages.iter().zip(outcomes) {
            if let Some(r) = &m.reservation_id {
                let e = marks.entry(r.as_str()).or_insert(*outcome);
                if *outcome == Delivery::Sent {
                    *e = Delivery::Sent;
                }
            }
        }
        let (own, foreign): (Vec<_>, Vec<_>) = marks
            .into_iter()
            .partition(|(r, _)| keys::reservation_group(r) == self.group);
        if !foreign.is_empty() {
            // Marks are sent in a pipeline, which does not reload a script on NOSCRIPT: the
            // session loaded it.
            let mut p = redis::pipe();
            for (reservation_id, outcome) in foreign {
                p.cmd("EVALSHA")
                    .arg(self.mark.get_hash())
                    .arg(1)
                    .arg(keys::reservation(reservation_id))
                    .arg(outcome.mark())
                    .ignore();
            }
            p.query_async::<()>(conn).await?;
        }
        let mut call = self.done.key(&self.stream);
        call.arg(GROUP);
        for (reservation_id, _) in &own {
            call.key(keys::reservation(reservation_id));
        }
        for (_, outcome) in &own {
            call.arg(outcome.mark());
        }
        for m in messages {
            call.arg(&m.entry_id);
        }
        call.invoke_async::<i64>(conn).await?;
        Ok(())
    }

    /// Delivers every message, retrying the transient failures together (with backoff) until
    /// each is delivered, rejected or too old; the outcome of each, in order.
    async fn deliver_all(&self, messages: &[Message]) -> Vec<Delivery> {
        let mut outcomes: Vec<Option<Delivery>> = messages
            .iter()
            .map(|m| {
                m.reservation_id.is_none().then(|| {
                    tracing::error!(entry = %m.entry_id, "outbox entry without reservationId, dropped");
                    self.metrics.failed.inc();
                    Delivery::Failed
                })
            })
            .collect();
        let give_up = Duration::from_millis(self.cfg.outbox_give_up_ms);
        let mut retry: u32 = 0;
        loop {
            let open: Vec<usize> = (0..messages.len())
                .filter(|&i| outcomes[i].is_none())
                .collect();
            if open.is_empty() {
                break;
            }
            let batch: Vec<&Message> = open.iter().map(|&i| &messages[i]).collect();
            let attempts = self.post_all(&batch).await;
            let mut again: Option<(usize, String)> = None;
            for (&i, attempt) in open.iter().zip(attempts) {
                outcomes[i] = self.judge(&messages[i], attempt, give_up, &mut again);
            }
            if let Some((count, why)) = again {
                retry = retry.saturating_add(1);
                let delay = self.backoff(retry);
                tracing::warn!(count, %why, retry, retry_in_ms = delay.as_millis() as u64, "notification delivery failed, will retry");
                tokio::time::sleep(delay).await;
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Delivery::Failed))
            .collect()
    }

    /// The outcome of one attempt, or None to retry it (counted in `again` with its reason).
    fn judge(
        &self,
        m: &Message,
        attempt: Attempt,
        give_up: Duration,
        again: &mut Option<(usize, String)>,
    ) -> Option<Delivery> {
        let reservation_id = m.reservation_id.as_deref().unwrap_or_default();
        match attempt {
            Attempt::Ok => {
                self.metrics.delivered.inc();
                tracing::debug!(%reservation_id, kind = %m.kind, "notification delivered");
                Some(Delivery::Sent)
            }
            Attempt::Permanent(why) => {
                self.metrics.failed.inc();
                tracing::error!(%reservation_id, entry = %m.entry_id, %why, "notification rejected, giving up");
                Some(Delivery::Failed)
            }
            Attempt::Transient(why) if m.age() >= give_up => {
                self.metrics.failed.inc();
                tracing::error!(%reservation_id, entry = %m.entry_id, %why, "notification undeliverable for too long, giving up");
                Some(Delivery::Failed)
            }
            Attempt::Transient(why) => {
                self.metrics.retries.inc();
                let (count, _) = again.get_or_insert((0, why));
                *count += 1;
                None
            }
        }
    }

    /// One attempt for each message, in order: batches of at most [`MAX_BATCH`], concurrently.
    async fn post_all(&self, messages: &[&Message]) -> Vec<Attempt> {
        let batches = messages.chunks(MAX_BATCH).map(|c| self.post_batch(c));
        futures::future::join_all(batches)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One `POST /notifications/batch`; an attempt per message, in order.
    async fn post_batch(&self, messages: &[&Message]) -> Vec<Attempt> {
        let all = |a: Attempt| vec![a; messages.len()];
        let body = BatchBody {
            notifications: messages.iter().map(|m| m.body()).collect(),
        };
        let resp = match self.http.post(&self.batch_url).json(&body).send().await {
            Ok(resp) => resp,
            Err(e) => return all(Attempt::Transient(e.to_string())),
        };
        let status = resp.status();
        if matches!(status.as_u16(), 404 | 405) || is_rejection(status) {
            // A notifications service without the batch endpoint, or a batch refused as a
            // whole: one request per message, which also singles out an invalid one.
            let singles = messages.iter().map(|m| self.post(m));
            return futures::future::join_all(singles).await;
        }
        if !status.is_success() {
            return all(Attempt::Transient(format!("HTTP {status}")));
        }
        match resp.json::<BatchReply>().await {
            Ok(reply) if reply.results.len() == messages.len() => {
                reply.results.iter().map(ItemResult::attempt).collect()
            }
            Ok(reply) => all(Attempt::Transient(format!(
                "batch answer has {} results for {} notifications",
                reply.results.len(),
                messages.len()
            ))),
            Err(e) => all(Attempt::Transient(format!("unreadable batch answer: {e}"))),
        }
    }

    /// One `POST /notifications`.
    async fn post(&self, m: &Message) -> Attempt {
        match self.http.post(&self.url).json(&m.body()).send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = if is_rejection(status) {
                    resp.text().await.unwrap_or_default()
                } else {
                    String::new()
                };
                Attempt::of(status, || text)
            }
            Err(e) => Attempt::Transient(e.to_string()),
        }
    }
}

/// The answer of `POST /notifications/batch`.
#[derive(Debug, Deserialize)]
struct BatchReply {
    results: Vec<ItemResult>,
}

/// One item's result in a [`BatchReply`].
#[derive(Debug, Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

impl ItemResult {
    fn attempt(&self) -> Attempt {
        match reqwest::StatusCode::from_u16(self.status) {
            Ok(s) => Attempt::of(s, || format!("{} {}", self.error, self.message)),
            Err(_) => Attempt::Transient(format!("item status {}", self.status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect(),
            ..StreamId::default()
        }
    }

    #[test]
    fn message_from_entry_fields() {
        let m = Message::from_entry(&entry(
            "1700000000000-0",
            &[
                ("reservationId", "R1"),
                ("eventId", "EVT-001"),
                ("userEmail", "a@b.c"),
                ("kind", "reservation_confirmed"),
                ("payload", "Seats A1 confirmed"),
            ],
        ));
        assert_eq!(m.reservation_id.as_deref(), Some("R1"));
        assert_eq!(m.message, "Seats A1 confirmed");
        assert!(m.age() > Duration::from_secs(3600));
        let m = Message::from_entry(&entry("5-0", &[("reservationId", "R2")]));
        assert_eq!(m.kind, DEFAULT_KIND);
        assert!(m.message.contains("R2"));
        let m = Message::from_entry(&entry(
            "6-0",
            &[
                ("reservationId", "R3"),
                ("eventId", "EVT-001"),
                ("kind", "reservation_confirmed"),
                (
                    "payload",
                    r#"{"kind":"reservation_confirmed","seats":["A1","A2"],"amount":100.0}"#,
                ),
            ],
        ));
        assert_eq!(
            m.message,
            "Your reservation R3 for event EVT-001 is confirmed (seats A1, A2), amount 100.00."
        );
        let long = "é".repeat(3_000);
        assert!(render_message("R", "E", "k", Some(&long)).len() <= MAX_MESSAGE_BYTES);
        assert!(Message::from_entry(&entry("5-0", &[]))
            .reservation_id
            .is_none());
    }

    #[test]
    fn batch_item_results_map_to_attempts() {
        let item = |status| ItemResult {
            status,
            error: "invalid_request".into(),
            message: "m".into(),
        };
        assert!(matches!(item(201).attempt(), Attempt::Ok));
        assert!(matches!(item(200).attempt(), Attempt::Ok));
        assert!(matches!(item(422).attempt(), Attempt::Permanent(_)));
        assert!(matches!(item(400).attempt(), Attempt::Permanent(_)));
        assert!(matches!(item(503).attempt(), Attempt::Transient(_)));
        assert!(matches!(item(0).attempt(), Attempt::Transient(_)));
        let reply: BatchReply = serde_json::from_str(
            r#"{"results":[{"status":201,"notificationId":"n"},{"status":422,"error":"invalid_request","message":"x","field":"userEmail"}]}"#,
        )
        .unwrap();
        assert_eq!(reply.results.len(), 2);
    }

    #[test]
    fn backoff_is_capped() {
        let w = Shared::new(
            OutboxConfig {
                outbox_backoff_ms: 100,
                outbox_max_backoff_ms: 1_000,
                ..OutboxConfig::default()
            },
            "t".into(),
            OutboxMetrics::new().unwrap(),
        )
        .unwrap();
        for n in 1..40 {
            let d = w.backoff(n);
            assert!(d <= Duration::from_millis(1_000), "{n}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{n}: {d:?}");
        }
    }
}
