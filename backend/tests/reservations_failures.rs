//! Each failure mode of SPEC §5 end to end, with real payments, notifications and Redis.

mod common;
mod reservations_support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use reservations_support::{assert_no_net_charge, eventually, ga_body, seat_body, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_payment_releases_the_seats() {
    let stack = Stack::start(&[]);
    let a = stack
        .reserve(
            json!({"eventId":"EVT-001","seats":["B1","B2"],"userEmail":"d@x.io","amount":20000.0}),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{}", a.raw);
    assert_eq!(a.code(), "payment_declined");
    assert_eq!(stack.seat_status("EVT-001", "B1").await, "available");
    assert_eq!(stack.seat_status("EVT-001", "B2").await, "available");
    let list = stack
        .get(format!(
            "{}/api/reservations?userEmail=d@x.io",
            stack.res.url()
        ))
        .await;
    let r = &list.body[0];
    assert_eq!(r["status"], "FAILED", "{}", list.raw);
    assert_no_net_charge(&stack, r["reservationId"].as_str().unwrap()).await;
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["held"], 0);
    // The seats can be bought right after.
    let ok = stack
        .reserve(seat_body("EVT-001", "B1", "d@x.io", 50.0))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_payments_answer_504_within_the_deadline_and_leave_no_charge() {
    let stack = Stack::start(&[]);
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 20000}))
        .await;
    let started = Instant::now();
    let a = stack
        .reserve(seat_body("EVT-001", "C3", "slow@x.io", 50.0))
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.raw);
    assert_eq!(a.code(), "payment_timeout");
    // SPEC: within the 15 s deadline (a little slack for a loaded debug build).
    assert!(took < Duration::from_millis(16_000), "took {took:?}");
    assert!(
        took > Duration::from_secs(10),
        "gave up too early: {took:?}"
    );

    // Payments recovers: the outcome is settled (refund), then the seat comes back.
    stack.chaos_reset(&stack.payments.url()).await;
    let list_url = format!("{}/api/reservations?userEmail=slow@x.io", stack.res.url());
    // Usually settled within ~0.1 s of the reset; twice on a loaded machine not within 20 s.
    let id = eventually(Duration::from_secs(60), || async {
        let l = stack.get(list_url.clone()).await;
        (l.body[0]["status"] == "FAILED")
            .then(|| l.body[0]["reservationId"].as_str().unwrap().to_owned())
    })
    .await
    .expect("saga was not compensated");
    assert_eq!(stack.seat_status("EVT-001", "C3").await, "available");
    assert_no_net_charge(&stack, &id).await;
    stack.audit_ok("EVT-001").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_down_fails_fast_once_the_breaker_opens() {
    let stack = Stack::start(&[]);
    stack
        .chaos(&stack.payments.url(), json!({"down": true}))
        .await;
    let mut last = Duration::ZERO;
    for i in 0..8 {
        let started = Instant::now();
        let a = stack
            .reserve(ga_body("EVT-002", 2, &format!("down{i}@x.io"), 30.0))
            .await;
        last = started.elapsed();
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.raw);
        assert_eq!(a.code(), "payment_unavailable");
        assert!(a.headers.contains_key("retry-after"), "{:?}", a.headers);
    }
    // SPEC: under 50 ms once open; generous bound for a debug build on a shared box.
    assert!(
        last < Duration::from_millis(500),
        "breaker did not fail fast: {last:?}"
    );
    let ev = stack.audit_ok("EVT-002").await;
    assert_eq!(ev["available"], 1000);
    assert_eq!(ev["held"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_down_then_up_still_confirms_and_delivers_later() {
    let mut stack = Stack::start(&[]);
    reservations_support::scenarios::notifications_down_then_up_still_confirms_and_delivers_later(
        &mut stack,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_down_by_chaos_serves_stale_reads_and_fails_writes_fast() {
    let stack = Stack::start(&[]);
    let fresh = stack.get(format!("{}/api/events", stack.res.url())).await;
    assert_eq!(fresh.status, StatusCode::OK);
    let _ = stack
        .get(format!("{}/api/events/EVT-001", stack.res.url()))
        .await;
    stack
        .chaos(&stack.res.url(), json!({"inventoryDown": true}))
        .await;

    let started = Instant::now();
    let a = stack
        .reserve(seat_body("EVT-001", "E5", "i@x.io", 50.0))
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.raw);
    assert_eq!(a.code(), "inventory_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    assert!(took < Duration::from_millis(500), "{took:?}");

    let list = stack.get(format!("{}/api/events", stack.res.url())).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.raw);
    assert_eq!(list.headers["x-data-stale"], "true");
    assert_eq!(list.body[0]["stale"], true);
    let one = stack
        .get(format!("{}/api/events/EVT-001", stack.res.url()))
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.raw);
    assert_eq!(one.body["stale"], true);
    assert_eq!(one.body["seats"].as_array().map(Vec::len), Some(100));
    let ready = stack.get(format!("{}/ready", stack.res.url())).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    stack.chaos_reset(&stack.res.url()).await;
    let ok = stack
        .reserve(seat_body("EVT-001", "E5", "i@x.io", 50.0))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.raw);
    let list = stack.get(format!("{}/api/events", stack.res.url())).await;
    assert!(!list.headers.contains_key("x-data-stale"));
    stack.audit_ok("EVT-001").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_restarted_empty_recovers_by_itself() {
    let mut stack = Stack::start(&["--redis-breaker-open-ms", "2000"]);
    let _ = stack.get(format!("{}/api/events", stack.res.url())).await;
    stack.redis.stop();

    let mut last = Duration::ZERO;
    for i in 0..8 {
        let started = Instant::now();
        let a = stack
            .reserve(seat_body("EVT-001", "F6", &format!("r{i}@x.io"), 50.0))
            .await;
        last = started.elapsed();
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.raw);
        assert_eq!(a.code(), "inventory_unavailable");
        assert!(a.headers.contains_key("retry-after"));
    }
    assert!(last < Duration::from_millis(500), "no fail-fast: {last:?}");
    let list = stack.get(format!("{}/api/events", stack.res.url())).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.raw);
    assert_eq!(list.headers["x-data-stale"], "true");

    stack.redis.restart();
    let created = eventually(Duration::from_secs(20), || async {
        let a = stack
            .reserve(seat_body("EVT-001", "F6", "back@x.io", 50.0))
            .await;
        (a.status == StatusCode::CREATED).then_some(a)
    })
    .await
    .expect("reservations did not recover after Redis came back");
    assert_eq!(created.body["status"], "CONFIRMED");
    let list = stack.get(format!("{}/api/events", stack.res.url())).await;
    assert!(!list.headers.contains_key("x-data-stale"));
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["sold"], 1);
}
