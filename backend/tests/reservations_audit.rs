//! `GET /admin/audit` on events with thousands of CONFIRMED reservations: the audit reads them in
//! bounded batches (scan cursors, pipelines of `AUDIT_BATCH` commands), so it answers 200 under a
//! tight per-call Redis timeout where one pipeline over every reservation would time out, and it
//! still reports exactly the violations it should. Real redis-server, real reservations process;
//! the reservations are made with the real inventory scripts (hold → payment → confirm), which is
//! what a saga does minus the HTTP and payment round trips.

mod common;

use std::time::{Duration, Instant};

use backend::chaos::Chaos;
use backend::reservations::admin::AUDIT_BATCH;
use backend::reservations::inventory::{
    Confirmation, HoldOutcome, HoldRequest, HoldTiming, Inventory, Step,
};
use backend::reservations::keys;
use backend::reservations::saga::now;
use backend::store::{Store, StoreConfig};
use common::{free_port, res_id, BackendProcess, RedisServer};
use serde_json::Value;

/// General-admission reservations (quantities 1, 2, 3 in turn: 2 places on average).
const GA_RESERVATIONS: usize = 20_000;
/// Capacity of the general-admission event.
const GA_CAPACITY: i64 = 100_000;
/// Numbered seats of the seated event, and how many of them get a CONFIRMED reservation.
const HALL_SEATS: usize = 1_500;
const HALL_RESERVATIONS: usize = 700;
/// Scripts in flight at once while filling Redis.
const CONCURRENCY: usize = 64;
/// The reservations process's per-call Redis timeout here: the former default, a quarter of the
/// current one. One pipeline over all of BIG's reservations overran it in a debug build (as one
/// over ~60,000 did in a release build after a benchmark); one batch of `AUDIT_BATCH` keys takes
/// a few milliseconds.
const TIGHT_TIMEOUT_MS: &str = "250";

// BIG spans many audit batches, HALL more than one.
const _: () = assert!(GA_RESERVATIONS > 4 * AUDIT_BATCH && HALL_RESERVATIONS > AUDIT_BATCH);

fn ga_id(i: usize) -> String {
    res_id(&format!("big-{i:05}"), "BIG")
}

fn hall_id(i: usize) -> String {
    res_id(&format!("hall-{i:05}"), "HALL")
}

/// One reservation taken to CONFIRMED by the real scripts.
async fn confirm_one(inv: &Inventory, event: &str, res_id: &str, seats: &[String], qty: u32) {
    let (ms, iso) = now();
    let held = inv
        .hold(
            &HoldRequest {
                res_id,
                event_id: event,
                seats,
                quantity: qty,
                amount: 10.0,
                user_email: "audit@x.io",
                idempotency: None,
            },
            &HoldTiming {
                now_ms: ms,
                now_iso: &iso,
                hold_ttl_ms: 600_000,
                lease_ms: 600_000,
                owner: "audit-test",
                pay_within_ms: None,
                not_after_ms: None,
                stale_claim_ms: 20_000,
            },
        )
        .await
        .expect("hold");
    assert_eq!(held, HoldOutcome::Held, "{res_id}");
    let step = inv
        .begin_payment(res_id, event, ms, &iso, 600_000)
        .await
        .expect("begin_payment");
    assert_eq!(step, Step::Done(0), "{res_id}");
    let step = inv
        .confirm(&Confirmation {
            res_id,
            event_id: event,
            idempotency_key: None,
            payment_id: "pay",
            response_body: "{}",
            notification_payload: "{}",
            now_iso: &iso,
        })
        .await
        .expect("confirm");
    assert_eq!(step, Step::Done(0), "{res_id}");
}

/// Creates BIG (general admission) and HALL (numbered) with their CONFIRMED reservations.
/// Returns the places sold in BIG.
async fn fill(redis: &RedisServer) -> i64 {
    let store = Store::connect(
        &redis.url(),
        StoreConfig {
            // Setup only: the machine is shared, nothing here is about latency.
            redis_timeout_ms: 30_000,
            ..StoreConfig::default()
        },
        Chaos::new(),
    )
    .expect("store");
    let inv = Inventory::new(store);
    inv.reset_event("BIG", "big", GA_CAPACITY as u64, &[])
        .await
        .expect("reset BIG");
    let seats: Vec<String> = (0..HALL_SEATS).map(|i| format!("S{i}")).collect();
    inv.reset_event("HALL", "hall", HALL_SEATS as u64, &seats)
        .await
        .expect("reset HALL");

    let qty = |i: usize| (i % 3) as u32 + 1;
    let ga: Vec<usize> = (0..GA_RESERVATIONS).collect();
    for chunk in ga.chunks(CONCURRENCY) {
        futures::future::join_all(chunk.iter().map(|&i| {
            let inv = &inv;
            async move { confirm_one(inv, "BIG", &ga_id(i), &[], qty(i)).await }
        }))
        .await;
    }
    let hall: Vec<usize> = (0..HALL_RESERVATIONS).collect();
    for chunk in hall.chunks(CONCURRENCY) {
        futures::future::join_all(chunk.iter().map(|&i| {
            let inv = &inv;
            let seat = vec![seats[i].clone()];
            async move { confirm_one(inv, "HALL", &hall_id(i), &seat, 1).await }
        }))
        .await;
    }
    (0..GA_RESERVATIONS).map(|i| i64::from(qty(i))).sum()
}

/// `GET /admin/audit`: asserts 200 and returns the body and how long it took.
async fn audit(http: &reqwest::Client, res: &BackendProcess) -> (Value, Duration) {
    let started = Instant::now();
    let r = http
        .get(format!("{}/admin/audit", res.url()))
        .send()
        .await
        .expect("audit request");
    let status = r.status();
    let raw = r.text().await.unwrap_or_default();
    let took = started.elapsed();
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "audit after {took:?}: {raw}"
    );
    (serde_json::from_str(&raw).expect("audit json"), took)
}

fn event<'a>(audit: &'a Value, id: &str) -> &'a Value {
    audit["events"]
        .as_array()
        .and_then(|evs| evs.iter().find(|e| e["eventId"] == id))
        .unwrap_or_else(|| panic!("{id} missing from {audit}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_thousands_of_confirmed_reservations_is_batched() {
    let redis = RedisServer::start();
    let filled = Instant::now();
    let big_sold = fill(&redis).await;
    eprintln!(
        "created {} confirmed reservations in {:?}",
        GA_RESERVATIONS + HALL_RESERVATIONS,
        filled.elapsed()
    );

    // Payments and notifications are not needed: their URLs point at closed ports.
    let res = BackendProcess::start(
        "reservations",
        &[
            "--redis-timeout-ms",
            TIGHT_TIMEOUT_MS,
            "--payments-url",
            &format!("http://127.0.0.1:{}", free_port()),
            "--notifications-url",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        &[("REDIS_URL", &redis.url())],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");

    // Several times: the failure this guards against was intermittent.
    for round in 0..3 {
        let (body, took) = audit(&http, &res).await;
        eprintln!("audit round {round}: {took:?}");
        assert_eq!(body["ok"], true, "{body}");
        let big = event(&body, "BIG");
        assert_eq!(big["confirmedReservations"], GA_RESERVATIONS);
        assert_eq!(big["confirmedSeats"], big_sold);
        assert_eq!(big["sold"], big_sold);
        assert_eq!(big["available"], GA_CAPACITY - big_sold);
        assert_eq!(big["held"], 0);
        let hall = event(&body, "HALL");
        assert_eq!(hall["confirmedReservations"], HALL_RESERVATIONS);
        assert_eq!(hall["confirmedSeats"], HALL_RESERVATIONS);
        assert_eq!(hall["sold"], HALL_RESERVATIONS);
        assert_eq!(hall["capacity"], HALL_SEATS);
    }

    // The same violations as ever, wherever the bad reservation sits among the batches.
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let last = ga_id(GA_RESERVATIONS - 1);
    let _: i64 = redis::cmd("HSET")
        .arg(keys::reservation(&last))
        .arg("status")
        .arg("CANCELLED")
        .query_async(&mut c)
        .await
        .expect("HSET");
    let first = hall_id(0);
    let _: i64 = redis::cmd("DEL")
        .arg(keys::reservation(&first))
        .query_async(&mut c)
        .await
        .expect("DEL");
    let (body, _) = audit(&http, &res).await;
    assert_eq!(body["ok"], false, "{body}");
    let violations: Vec<&str> = body["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        violations,
        vec![
            format!("BIG: reservation {last} is listed as confirmed but is CANCELLED"),
            format!("HALL: reservation {first} is listed as confirmed but is missing"),
            format!(
                "HALL: sold {HALL_RESERVATIONS} != seats of CONFIRMED reservations {}",
                HALL_RESERVATIONS - 1
            ),
        ],
        "{body}"
    );
    // A listed-but-cancelled reservation still counts its places, as before.
    assert_eq!(event(&body, "BIG")["confirmedSeats"], big_sold);
    assert_eq!(
        event(&body, "HALL")["confirmedReservations"],
        HALL_RESERVATIONS
    );

    // No audit call timed out or failed: the breaker stayed closed and the service is ready.
    let ready = http
        .get(format!("{}/ready", res.url()))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
}
