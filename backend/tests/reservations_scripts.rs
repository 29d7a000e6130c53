//! The inventory Lua scripts against a real redis-server, through the typed wrappers: state
//! machine edges that are hard to reach through HTTP timing.

mod common;

use backend::chaos::Chaos;
use backend::reservations::inventory::{HoldOutcome, HoldRequest, Inventory, Step};
use backend::reservations::saga::now;
use backend::store::{Store, StoreConfig};

use common::RedisServer;

fn inventory(redis: &RedisServer) -> Inventory {
    Inventory::new(
        Store::connect(&redis.url(), StoreConfig::default(), Chaos::new()).expect("store"),
    )
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
        ms,
        &iso,
        ttl,
        5_000,
        "owner-1",
    )
    .await
    .expect("hold")
}

async fn counters(redis: &RedisServer, event: &str) -> (i64, i64, i64) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let v: Vec<i64> = redis::cmd("HMGET")
        .arg(format!("ev:{{{event}}}:meta"))
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
    assert!(inv.seed_demo().await.unwrap(), "first seed creates");
    assert!(!inv.seed_demo().await.unwrap(), "second seed is a no-op");
    let ab = seats(&["A1", "A2"]);

    assert_eq!(
        hold(&inv, "r1", "EVT-001", &ab, 2, 60_000).await,
        HoldOutcome::Held
    );
    assert_eq!(counters(&redis, "EVT-001").await, (98, 2, 0));
    // Overlapping hold: refused, nothing written.
    let overlap = seats(&["A3", "A2"]);
    assert_eq!(
        hold(&inv, "r2", "EVT-001", &overlap, 2, 60_000).await,
        HoldOutcome::Rejected {
            code: "seat_unavailable".into(),
            detail: "A2".into()
        }
    );
    assert_eq!(counters(&redis, "EVT-001").await, (98, 2, 0));
    let unknown = seats(&["A3", "Q1"]);
    assert_eq!(
        hold(&inv, "r3", "EVT-001", &unknown, 2, 60_000).await,
        HoldOutcome::Rejected {
            code: "seat_not_found".into(),
            detail: "Q1".into()
        }
    );

    // Payment pending is not expirable, even past the hold deadline.
    let (ms, iso) = now();
    assert_eq!(
        inv.begin_payment("r1", "EVT-001", ms, &iso).await.unwrap(),
        Step::Done(0)
    );
    let later = ms + 10 * 60_000;
    assert_eq!(
        inv.release(
            "r1",
            "EVT-001",
            None,
            "EXPIRED",
            "hold_expired",
            true,
            later,
            &iso
        )
        .await
        .unwrap(),
        Step::NotExpired
    );
    // Confirm: sold, outbox entry written by the same script.
    assert_eq!(
        inv.confirm("r1", "EVT-001", None, "pay-1", "{}", "{}", ms, &iso)
            .await
            .unwrap(),
        Step::Done(0)
    );
    assert_eq!(counters(&redis, "EVT-001").await, (98, 0, 2));
    // A second confirm is refused (CAS on the saga state).
    assert!(matches!(
        inv.confirm("r1", "EVT-001", None, "pay-1", "{}", "{}", ms, &iso).await.unwrap(),
        Step::WrongState(s, _) if s == "CONFIRMED"
    ));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let xlen: i64 = redis::cmd("XLEN")
        .arg("outbox:notifications")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(xlen, 1);
    let notification: String = redis::cmd("HGET")
        .arg("res:{r1}")
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
    inv.reset_event("GA-1", "ga", 5, &[]).await.unwrap();
    inv.reset_event("S-1", "numbered", 2, &seats(&["X1", "X2"]))
        .await
        .unwrap();

    // GA capacity: 3 + 3 > 5.
    assert_eq!(
        hold(&inv, "g1", "GA-1", &[], 3, 60_000).await,
        HoldOutcome::Held
    );
    assert_eq!(
        hold(&inv, "g2", "GA-1", &[], 3, 60_000).await,
        HoldOutcome::Rejected {
            code: "sold_out".into(),
            detail: "GA-1".into()
        }
    );
    let (ms, iso) = now();
    assert_eq!(
        inv.release(
            "g1",
            "GA-1",
            None,
            "FAILED",
            "payment_declined",
            false,
            ms,
            &iso
        )
        .await
        .unwrap(),
        Step::Done(3)
    );
    assert_eq!(counters(&redis, "GA-1").await, (5, 0, 0));
    // Released twice: refused, counters unchanged.
    assert!(matches!(
        inv.release("g1", "GA-1", None, "FAILED", "x", false, ms, &iso)
            .await
            .unwrap(),
        Step::WrongState(..)
    ));
    assert_eq!(counters(&redis, "GA-1").await, (5, 0, 0));

    // A hold past its deadline blocks a seat until expired; the new buyer's call expires it.
    let x1 = seats(&["X1"]);
    assert_eq!(hold(&inv, "h1", "S-1", &x1, 1, 1).await, HoldOutcome::Held);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        hold(&inv, "h2", "S-1", &x1, 1, 60_000).await,
        HoldOutcome::BlockedByExpired("h1".into())
    );
    let (ms, iso) = now();
    assert_eq!(
        inv.release("h1", "S-1", None, "EXPIRED", "hold_expired", true, ms, &iso)
            .await
            .unwrap(),
        Step::Done(1)
    );
    assert_eq!(
        hold(&inv, "h2", "S-1", &x1, 1, 60_000).await,
        HoldOutcome::Held
    );

    // Reset while h2 is held: the old saga never touches the new inventory.
    inv.reset_event("S-1", "numbered again", 2, &seats(&["X1", "X2"]))
        .await
        .unwrap();
    assert_eq!(counters(&redis, "S-1").await, (2, 0, 0));
    let (ms, iso) = now();
    assert_eq!(
        inv.release(
            "h2",
            "S-1",
            None,
            "FAILED",
            "payment_declined",
            false,
            ms,
            &iso
        )
        .await
        .unwrap(),
        Step::Done(0)
    );
    assert_eq!(counters(&redis, "S-1").await, (2, 0, 0));
    // Wrong kind of request for the event.
    assert_eq!(
        hold(&inv, "k1", "S-1", &[], 1, 60_000).await,
        HoldOutcome::Rejected {
            code: "wrong_kind".into(),
            detail: "quantity".into()
        }
    );
    assert_eq!(
        hold(&inv, "k2", "GA-1", &x1, 1, 60_000).await,
        HoldOutcome::Rejected {
            code: "wrong_kind".into(),
            detail: "seatId".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_seeding_creates_the_demo_events_once() {
    let redis = RedisServer::start();
    let replicas: Vec<Inventory> = (0..8).map(|_| inventory(&redis)).collect();
    let results = futures::future::join_all(replicas.iter().map(|i| i.seed_demo())).await;
    let created = results.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(created, 1);
    assert_eq!(counters(&redis, "EVT-001").await, (100, 0, 0));
    assert_eq!(counters(&redis, "EVT-002").await, (1000, 0, 0));
}
