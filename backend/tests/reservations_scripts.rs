//! The inventory Lua scripts against a real redis-server, through the typed wrappers: state
//! machine edges that are hard to reach through HTTP timing.

mod common;

use backend::chaos::Chaos;
use backend::reservations::inventory::{
    Confirmation, HoldOutcome, HoldRequest, HoldTiming, Inventory, Release, Step,
};
use backend::reservations::keys;
use backend::reservations::model::{Failure, ReservationStatus};
use backend::reservations::saga::now;
use backend::slots;
use backend::store::{Store, StoreConfig};

use common::RedisServer;

fn inventory(redis: &RedisServer) -> Inventory {
    Inventory::new(
        Store::connect(&redis.url(), StoreConfig::default(), Chaos::new()).expect("store"),
    )
}

/// A reservation id drawn into the event's slot group, as the saga draws them.
fn rid(event: &str) -> String {
    slots::new_id_in_group(keys::event_group(event))
}

fn seats(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn hold(
    inv: &Inventory,
    res: &str,
    event: &str,
    s: &[String],
    qty: u32,
    ttl: u64,
) -> HoldOutcome {
    let (ms, iso) = now();
    inv.hold(
        &HoldRequest {
            res_id: res,
            event_id: event,
            seats: s,
            quantity: qty,
            amount: 10.0,
            user_email: "s@x.io",
            idempotency: None,
        },
        &HoldTiming {
            now_ms: ms,
            now_iso: &iso,
            hold_ttl_ms: ttl,
            lease_ms: 5_000,
            owner: "owner-1",
            pay_within_ms: None,
            not_after_ms: None,
            stale_claim_ms: 20_000,
        },
    )
    .await
    .expect("hold")
}

fn confirmation<'a>(res_id: &'a str, event_id: &'a str, now_iso: &'a str) -> Confirmation<'a> {
    Confirmation {
        res_id,
        event_id,
        idempotency_key: None,
        payment_id: "pay-1",
        response_body: "{}",
        notification_payload: "{}",
        now_iso,
    }
}

async fn counters(redis: &RedisServer, event: &str) -> (i64, i64, i64) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let v: Vec<i64> = redis::cmd("HMGET")
        .arg(keys::event_meta(event))
        .arg("available")
        .arg("held")
        .arg("sold")
        .query_async(&mut c)
        .await
        .unwrap();
    (v[0], v[1], v[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seat_state_machine() {
    let redis = RedisServer::start();
    let inv = inventory(&redis);
    let (r1, r2, r3) = (rid("EVT-001"), rid("EVT-001"), rid("EVT-001"));
    assert_eq!(inv.seed_demo().await.unwrap(), 2, "first seed creates");
    assert_eq!(inv.seed_demo().await.unwrap(), 0, "second seed is a no-op");
    let ab = seats(&["A1", "A2"]);

    assert_eq!(
        hold(&inv, &r1, "EVT-001", &ab, 2, 60_000).await,
        HoldOutcome::Held
    );
    assert_eq!(counters(&redis, "EVT-001").await, (98, 2, 0));
    // Overlapping hold: refused, nothing written.
    let overlap = seats(&["A3", "A2"]);
    assert_eq!(
        hold(&inv, &r2, "EVT-001", &overlap, 2, 60_000).await,
        HoldOutcome::Rejected {
            failure: Failure::SeatUnavailable,
            detail: "A2".into()
        }
    );
    assert_eq!(counters(&redis, "EVT-001").await, (98, 2, 0));
    let unknown = seats(&["A3", "Q1"]);
    assert_eq!(
        hold(&inv, &r3, "EVT-001", &unknown, 2, 60_000).await,
        HoldOutcome::Rejected {
            failure: Failure::SeatNotFound,
            detail: "Q1".into()
        }
    );

    // Payment pending is not expirable, even past the hold deadline.
    let (ms, iso) = now();
    assert_eq!(
        inv.begin_payment(&r1, "EVT-001", ms, &iso, 60_000)
            .await
            .unwrap(),
        Step::Done(0)
    );
    let later = ms + 10 * 60_000;
    assert_eq!(
        inv.release(&Release {
            res_id: &r1,
            event_id: "EVT-001",
            idempotency_key: None,
            end: ReservationStatus::Expired,
            failure: Failure::HoldExpired,
            require_expired: true,
            now_ms: later,
            now_iso: &iso,
        })
        .await
        .unwrap(),
        Step::NotExpired
    );
    // Confirm: sold, outbox entry written by the same script.
    assert_eq!(
        inv.confirm(&confirmation(&r1, "EVT-001", &iso))
            .await
            .unwrap(),
        Step::Done(0)
    );
    assert_eq!(counters(&redis, "EVT-001").await, (98, 0, 2));
    // A second confirm is refused (CAS on the saga state).
    assert!(matches!(
        inv.confirm(&confirmation(&r1, "EVT-001", &iso))
            .await
            .unwrap(),
        Step::WrongState(ReservationStatus::Confirmed, _)
    ));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let xlen: i64 = redis::cmd("XLEN")
        .arg(keys::outbox(keys::event_group("EVT-001")))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(xlen, 1);
    let notification: String = redis::cmd("HGET")
        .arg(keys::reservation(&r1))
        .arg("notification")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(notification, "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_and_event_resets() {
    let redis = RedisServer::start();
    let inv = inventory(&redis);
    let (g1, g2, k2) = (rid("GA-1"), rid("GA-1"), rid("GA-1"));
    let (h1, h2, k1) = (rid("S-1"), rid("S-1"), rid("S-1"));
    inv.reset_event("GA-1", "ga", 5, &[]).await.unwrap();
    inv.reset_event("S-1", "numbered", 2, &seats(&["X1", "X2"]))
        .await
        .unwrap();

    // GA capacity: 3 + 3 > 5.
    assert_eq!(
        hold(&inv, &g1, "GA-1", &[], 3, 60_000).await,
        HoldOutcome::Held
    );
    assert_eq!(
        hold(&inv, &g2, "GA-1", &[], 3, 60_000).await,
        HoldOutcome::Rejected {
            failure: Failure::SoldOut,
            detail: "GA-1".into()
        }
    );
    let (ms, iso) = now();
    assert_eq!(
        inv.release(&Release {
            res_id: &g1,
            event_id: "GA-1",
            idempotency_key: None,
            end: ReservationStatus::Failed,
            failure: Failure::PaymentDeclined,
            require_expired: false,
            now_ms: ms,
            now_iso: &iso,
        })
        .await
        .unwrap(),
        Step::Done(3)
    );
    assert_eq!(counters(&redis, "GA-1").await, (5, 0, 0));
    // Released twice: refused, counters unchanged.
    assert!(matches!(
        inv.release(&Release {
            res_id: &g1,
            event_id: "GA-1",
            idempotency_key: None,
            end: ReservationStatus::Failed,
            failure: Failure::PaymentTimeout,
            require_expired: false,
            now_ms: ms,
            now_iso: &iso,
        })
        .await
        .unwrap(),
        Step::WrongState(..)
    ));
    assert_eq!(counters(&redis, "GA-1").await, (5, 0, 0));

    // A hold past its deadline blocks a seat until expired; the new buyer's call expires it.
    let x1 = seats(&["X1"]);
    assert_eq!(hold(&inv, &h1, "S-1", &x1, 1, 1).await, HoldOutcome::Held);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        hold(&inv, &h2, "S-1", &x1, 1, 60_000).await,
        HoldOutcome::BlockedByExpired(h1.clone())
    );
    let (ms, iso) = now();
    assert_eq!(
        inv.release(&Release {
            res_id: &h1,
            event_id: "S-1",
            idempotency_key: None,
            end: ReservationStatus::Expired,
            failure: Failure::HoldExpired,
            require_expired: true,
            now_ms: ms,
            now_iso: &iso,
        })
        .await
        .unwrap(),
        Step::Done(1)
    );
    assert_eq!(
        hold(&inv, &h2, "S-1", &x1, 1, 60_000).await,
        HoldOutcome::Held
    );

    // Reset while h2 is held: the old saga never touches the new inventory.
    inv.reset_event("S-1", "numbered again", 2, &seats(&["X1", "X2"]))
        .await
        .unwrap();
    assert_eq!(counters(&redis, "S-1").await, (2, 0, 0));
    let (ms, iso) = now();
    assert_eq!(
        inv.release(&Release {
            res_id: &h2,
            event_id: "S-1",
            idempotency_key: None,
            end: ReservationStatus::Failed,
            failure: Failure::PaymentDeclined,
            require_expired: false,
            now_ms: ms,
            now_iso: &iso,
        })
        .await
        .unwrap(),
        Step::Done(0)
    );
    assert_eq!(counters(&redis, "S-1").await, (2, 0, 0));
    // Wrong kind of request for the event.
    assert_eq!(
        hold(&inv, &k1, "S-1", &[], 1, 60_000).await,
        HoldOutcome::Rejected {
            failure: Failure::WrongKind,
            detail: "quantity".into()
        }
    );
    assert_eq!(
        hold(&inv, &k2, "GA-1", &x1, 1, 60_000).await,
        HoldOutcome::Rejected {
            failure: Failure::WrongKind,
            detail: "seatId".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_seeding_creates_the_demo_events_once() {
    let redis = RedisServer::start();
    let replicas: Vec<Inventory> = (0..8).map(|_| inventory(&redis)).collect();
    let results = futures::future::join_all(replicas.iter().map(|i| i.seed_demo())).await;
    let created: usize = results.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(created, 2, "each demo event created once");
    assert_eq!(counters(&redis, "EVT-001").await, (100, 0, 0));
    assert_eq!(counters(&redis, "EVT-002").await, (1000, 0, 0));
}
