//! The outbox worker with a real redis-server and a real notifications service (in-process router
//! on a loopback port): delivery + ack + `notification=sent`, notifications down then back, no
//! duplicates on redelivery, takeover from a dead consumer, Redis restarting empty. Entries are
//! written to one slot group's stream; the worker consumes every group's.

mod common;

use std::time::{Duration, Instant};

use backend::chaos::Chaos;
use backend::chaos::ChaosSettings;
use backend::notifications::{router, NotificationsState};
use backend::outbox::{spawn_worker_with_metrics, stream, OutboxConfig, OutboxMetrics, GROUP};
use backend::reservations::keys;
use backend::slots::new_id_in_group;
use backend::store::{Store, StoreConfig};
use common::RedisServer;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

struct Setup {
    redis: RedisServer,
    notifications: NotificationsState,
    metrics: OutboxMetrics,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

async fn setup(claim_idle_ms: u64) -> Setup {
    setup_with(claim_idle_ms, 3_600_000).await
}

async fn setup_with(claim_idle_ms: u64, give_up_ms: u64) -> Setup {
    setup_service(claim_idle_ms, give_up_ms, false).await
}

/// `without_batch`: the notifications service answers 404 on `/notifications/batch`, as one
/// from before that endpoint does.
async fn setup_service(claim_idle_ms: u64, give_up_ms: u64, without_batch: bool) -> Setup {
    let redis = RedisServer::start();
    let notifications = NotificationsState::new().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut app = router(notifications.clone());
    if without_batch {
        app = axum::Router::new()
            .route(
                "/notifications/batch",
                axum::routing::post(|| async { axum::http::StatusCode::NOT_FOUND }),
            )
            .fallback_service(app);
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = OutboxConfig {
        notifications_url: format!("http://{addr}"),
        outbox_block_ms: 200,
        outbox_backoff_ms: 50,
        outbox_max_backoff_ms: 300,
        outbox_claim_idle_ms: claim_idle_ms,
        outbox_give_up_ms: give_up_ms,
        ..OutboxConfig::default()
    };
    let metrics = OutboxMetrics::new().unwrap();
    let (stop, rx) = watch::channel(false);
    let store = Store::connect(&redis.url(), StoreConfig::default(), Chaos::new()).unwrap();
    let worker = spawn_worker_with_metrics(store, cfg, "worker-1".into(), rx, metrics.clone());
    Setup {
        redis,
        notifications,
        metrics,
        stop,
        worker,
    }
}

async fn conn(redis: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xadd(c: &mut MultiplexedConnection, reservation: &str, kind: &str) -> String {
    redis::cmd("XADD")
        .arg(stream(0))
        .arg("*")
        .arg("reservationId")
        .arg(reservation)
        .arg("eventId")
        .arg("EVT-001")
        .arg("userEmail")
        .arg("a@b.c")
        .arg("kind")
        .arg(kind)
        .arg("payload")
        .arg(format!("Reservation {reservation}: {kind}"))
        .query_async(c)
        .await
        .unwrap()
}

async fn reservation_hash(c: &mut MultiplexedConnection, id: &str) {
    let _: () = redis::cmd("HSET")
        .arg(keys::reservation(id))
        .arg("status")
        .arg("CONFIRMED")
        .arg("notification")
        .arg("queued")
        .query_async(c)
        .await
        .unwrap();
}

async fn notification_field(c: &mut MultiplexedConnection, id: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(keys::reservation(id))
        .arg("notification")
        .query_async(c)
        .await
        .unwrap()
}

/// Polls `f` every 50 ms until true or `limit` (bounded).
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn pending(c: &mut MultiplexedConnection) -> usize {
    let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream(0))
        .arg(GROUP)
        .query_async(c)
        .await
        .unwrap();
    reply.count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_acks_and_marks_sent() {
    let s = setup(30_000).await;
    let mut c = conn(&s.redis).await;
    // Written before the worker had a chance to create the group: still delivered.
    reservation_hash(&mut c, "R1").await;
    xadd(&mut c, "R1", "reservation_confirmed").await;
    xadd(&mut c, "R2", "reservation_confirmed").await; // no reservation hash
    let inbox = s.notifications.inbox.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let inbox = inbox.clone();
            async move { inbox.summary().count == 2 }
        })
        .await,
        "not delivered: {:?}",
        inbox.summary()
    );
    let mut c2 = conn(&s.redis).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c2.clone();
            async move { notification_field(&mut c, "R1").await.as_deref() == Some("sent") }
        })
        .await
    );
    let r1 = inbox.for_reservation("R1");
    assert_eq!(r1.len(), 1);
    assert_eq!(r1[0].user_email, "a@b.c");
    assert_eq!(r1[0].kind, "reservation_confirmed");
    assert_eq!(r1[0].message, "Reservation R1: reservation_confirmed");
    // No hash is created for a reservation that does not exist.
    let exists: bool = redis::cmd("EXISTS")
        .arg(keys::reservation("R2"))
        .query_async(&mut c2)
        .await
        .unwrap();
    assert!(!exists);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c2.clone();
            async move { pending(&mut c).await == 0 }
        })
        .await
    );
    let len: usize = redis::cmd("XLEN")
        .arg(stream(0))
        .query_async(&mut c2)
        .await
        .unwrap();
    assert_eq!(len, 0, "delivered entries are removed from the stream");
    assert_eq!(s.metrics.delivered.get(), 2);
    s.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.worker)
        .await
        .expect("worker stops on shutdown")
        .unwrap();
}

/// Writes `n` entries for reservations of group 0 (the stream's own group) in one transaction,
/// so that the worker reads them in one round; the first has no userEmail (invalid).
async fn write_round(c: &mut MultiplexedConnection, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|_| new_id_in_group(0)).collect();
    let mut p = redis::pipe();
    p.atomic();
    for (i, id) in ids.iter().enumerate() {
        p.cmd("HSET")
            .arg(keys::reservation(id))
            .arg("notification")
            .arg("queued")
            .ignore();
        let email = if i == 0 { "" } else { "a@b.c" };
        p.cmd("XADD")
            .arg(stream(0))
            .arg("*")
            .arg("reservationId")
            .arg(id)
            .arg("userEmail")
            .arg(email)
            .arg("kind")
            .arg("reservation_confirmed")
            .ignore();
    }
    let _: () = p.query_async(c).await.unwrap();
    ids
}

/// Requests notifications answered on `route` with `status`.
fn answered(s: &Setup, route: &str, status: &str) -> u64 {
    s.notifications
        .metrics
        .http_requests_total
        .with_label_values(&["notifications", route, status])
        .get()
}

/// Waits until every entry of the round is marked; returns the marks.
async fn marks_of(s: &Setup, ids: &[String]) -> Vec<Option<String>> {
    let c = conn(&s.redis).await;
    let ids = ids.to_vec();
    let done = eventually(Duration::from_secs(10), || {
        let (mut c, ids) = (c.clone(), ids.clone());
        async move {
            for id in &ids {
                if notification_field(&mut c, id).await.as_deref() == Some("queued") {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(done, "round not marked");
    let mut c = c.clone();
    let mut marks = Vec::new();
    for id in &ids {
        marks.push(notification_field(&mut c, id).await);
    }
    marks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_is_delivered_in_one_batch_request_and_an_invalid_item_fails_alone() {
    let s = setup(30_000).await;
    let mut c = conn(&s.redis).await;
    // Let the worker create the group and block on the stream first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = write_round(&mut c, 20).await;
    let marks = marks_of(&s, &ids).await;
    assert_eq!(marks[0].as_deref(), Some("failed"), "the invalid item");
    assert!(marks[1..].iter().all(|m| m.as_deref() == Some("sent")));
    assert_eq!(s.notifications.inbox.summary().count, 19);
    assert_eq!(answered(&s, "/notifications/batch", "200"), 1);
    assert_eq!(answered(&s, "/notifications", "201"), 0);
    assert_eq!(s.metrics.retries.get(), 0);
    assert_eq!((s.metrics.delivered.get(), s.metrics.failed.get()), (19, 1));
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            async move { pending(&mut c).await == 0 }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_the_batch_endpoint_gets_one_request_per_message() {
    let s = setup_service(30_000, 3_600_000, true).await;
    let mut c = conn(&s.redis).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = write_round(&mut c, 5).await;
    let marks = marks_of(&s, &ids).await;
    assert_eq!(marks[0].as_deref(), Some("failed"));
    assert!(marks[1..].iter().all(|m| m.as_deref() == Some("sent")));
    assert_eq!(answered(&s, "/notifications", "201"), 4);
    assert_eq!(answered(&s, "/notifications", "422"), 1);
    assert_eq!(s.notifications.inbox.summary().count, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_down_then_back_delivers_once() {
    let s = setup(30_000).await;
    let mut c = conn(&s.redis).await;
    s.notifications.chaos.set(ChaosSettings {
        down: true,
        ..ChaosSettings::default()
    });
    reservation_hash(&mut c, "R3").await;
    xadd(&mut c, "R3", "reservation_confirmed").await;
    let metrics = s.metrics.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let m = metrics.clone();
            async move { m.retries.get() >= 3 }
        })
        .await,
        "worker did not retry"
    );
    assert_eq!(s.notifications.inbox.summary().count, 0);
    assert_eq!(
        notification_field(&mut c, "R3").await.as_deref(),
        Some("queued")
    );
    let metrics = s.metrics.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let m = metrics.clone();
            async move { m.pending.get() == 1 }
        })
        .await,
        "backlog gauge not updated while retrying"
    );
    s.notifications.chaos.reset();
    let c2 = conn(&s.redis).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut c = c2.clone();
            async move { notification_field(&mut c, "R3").await.as_deref() == Some("sent") }
        })
        .await
    );
    assert_eq!(s.notifications.inbox.for_reservation("R3").len(), 1);
    assert_eq!(s.metrics.delivered.get(), 1);
    let metrics = s.metrics.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let m = metrics.clone();
            async move { m.pending.get() == 0 }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_and_dead_consumer_takeover_never_duplicate() {
    let s = setup(1_000).await;
    let mut c = conn(&s.redis).await;
    // Let the worker create the group, then deliver R5 once.
    xadd(&mut c, "R5", "reservation_confirmed").await;
    let inbox = s.notifications.inbox.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let inbox = inbox.clone();
            async move { inbox.summary().count == 1 }
        })
        .await
    );
    // A redelivered copy of the same event (e.g. crash between POST and XACK).
    xadd(&mut c, "R5", "reservation_confirmed").await;
    // A consumer reads R6 and dies without acknowledging it.
    xadd(&mut c, "R6", "reservation_confirmed").await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("dead-consumer")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(stream(0))
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || {
            let inbox = inbox.clone();
            async move { inbox.for_reservation("R6").len() == 1 }
        })
        .await,
        "entry of the dead consumer was not taken over"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c.clone();
            async move { pending(&mut c).await == 0 }
        })
        .await
    );
    assert_eq!(inbox.for_reservation("R5").len(), 1);
    assert_eq!(inbox.summary().count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_redis_restart() {
    let mut s = setup(30_000).await;
    let mut c = conn(&s.redis).await;
    xadd(&mut c, "R7", "reservation_confirmed").await;
    let inbox = s.notifications.inbox.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let inbox = inbox.clone();
            async move { inbox.summary().count == 1 }
        })
        .await
    );
    // Redis dies and comes back empty: no stream, no group.
    s.redis.restart();
    let mut c = conn(&s.redis).await;
    // Give the worker a moment to notice; the entry may be written before or after it does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reservation_hash(&mut c, "R8").await;
    xadd(&mut c, "R8", "reservation_confirmed").await;
    assert!(
        eventually(Duration::from_secs(15), || {
            let inbox = inbox.clone();
            async move { inbox.for_reservation("R8").len() == 1 }
        })
        .await,
        "not delivered after redis restart"
    );
    let c2 = conn(&s.redis).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c2.clone();
            async move { notification_field(&mut c, "R8").await.as_deref() == Some("sent") }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_too_old_entries_are_marked_failed() {
    let s = setup_with(30_000, 1_500).await;
    let mut c = conn(&s.redis).await;
    // Rejected by notifications (422: no userEmail): failed at once, not retried.
    reservation_hash(&mut c, "R10").await;
    let _: String = redis::cmd("XADD")
        .arg(stream(0))
        .arg("*")
        .arg("reservationId")
        .arg("R10")
        .arg("kind")
        .arg("reservation_confirmed")
        .query_async(&mut c)
        .await
        .unwrap();
    let c2 = conn(&s.redis).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c2.clone();
            async move { notification_field(&mut c, "R10").await.as_deref() == Some("failed") }
        })
        .await
    );
    assert_eq!(s.metrics.retries.get(), 0);
    // Undeliverable for longer than the give-up age (1.5 s here): failed after retrying.
    s.notifications.chaos.set(ChaosSettings {
        down: true,
        ..ChaosSettings::default()
    });
    reservation_hash(&mut c, "R11").await;
    xadd(&mut c, "R11", "reservation_confirmed").await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut c = c2.clone();
            async move { notification_field(&mut c, "R11").await.as_deref() == Some("failed") }
        })
        .await
    );
    assert!(s.metrics.retries.get() >= 2);
    assert_eq!(s.metrics.failed.get(), 2);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = c2.clone();
            async move { pending(&mut c).await == 0 }
        })
        .await
    );
    assert_eq!(s.notifications.inbox.summary().count, 0);
}
