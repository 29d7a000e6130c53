//! Durability and exactly-once behaviour: Idempotency-Key under concurrency, a reservations
//! process killed mid-saga, abandoned holds, cancellation.

mod common;
mod reservations_support;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use backend::chaos::Chaos;
use backend::reservations::inventory::{HoldOutcome, HoldRequest, HoldTiming, Inventory};
use backend::reservations::saga::now;
use backend::store::{Store, StoreConfig};
use reservations_support::{assert_no_net_charge, eventually, scenarios, seat_body, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_idempotency_key_fifty_times_gives_one_reservation_and_one_charge() {
    let stack = Arc::new(Stack::start(&[]));
    scenarios::same_idempotency_key_fifty_times(&stack, "key-h8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_charge_the_saga_is_finished_after_restart() {
    let mut stack = Stack::start(scenarios::CRASH_FLAGS);
    scenarios::killed_mid_charge_the_saga_is_finished_after_restart(&mut stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_hold_returns_to_stock_after_its_ttl() {
    let stack = Stack::start(&["--hold-ttl-ms", "1000"]);
    let _ = stack.get(format!("{}/api/events", stack.res.url())).await;
    // A hold whose process vanished right after holding: made with the real hold script,
    // then nobody drives it.
    let store =
        Store::connect(&stack.redis.url(), StoreConfig::default(), Chaos::new()).expect("store");
    let inv = Inventory::new(store);
    let seats = vec!["G7".to_owned(), "G8".to_owned()];
    let abandoned = common::res_id("abandoned-1", "EVT-001");
    let (now_ms, now_iso) = now();
    let held = inv
        .hold(
            &HoldRequest {
                res_id: &abandoned,
                event_id: "EVT-001",
                seats: &seats,
                quantity: 2,
                amount: 20.0,
                user_email: "gone@x.io",
                idempotency: None,
            },
            &HoldTiming {
                now_ms,
                now_iso: &now_iso,
                hold_ttl_ms: 1000,
                lease_ms: 1000,
                owner: "a-dead-replica",
                pay_within_ms: None,
                not_after_ms: None,
                stale_claim_ms: 20_000,
            },
        )
        .await
        .expect("hold");
    assert_eq!(held, HoldOutcome::Held);
    assert_eq!(stack.seat_status("EVT-001", "G7").await, "held");
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["held"], 2);

    let back = eventually(Duration::from_secs(6), || async {
        (stack.seat_status("EVT-001", "G7").await == "available"
            && stack.seat_status("EVT-001", "G8").await == "available")
            .then_some(())
    })
    .await;
    assert!(back.is_some(), "hold never returned to stock");
    assert_eq!(stack.reservation(&abandoned).await["status"], "EXPIRED");
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["held"], 0);
    assert_eq!(ev["available"], 100);
    // The seat sells normally afterwards.
    let a = stack
        .reserve(seat_body("EVT-001", "G7", "next@x.io", 20.0))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_refunds_and_releases_then_refuses_a_second_time() {
    let stack = Stack::start(&[]);
    let a = stack
        .reserve(
            json!({"eventId":"EVT-001","seats":["I1","I2"],"userEmail":"c@x.io","amount":80.0}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    let id = a.body["reservationId"].as_str().unwrap().to_owned();
    let cancel_url = format!("{}/api/reservations/{id}/cancel", stack.res.url());
    let c = stack
        .send(reqwest::Method::POST, cancel_url.clone(), None, &[])
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.raw);
    assert_eq!(c.body["status"], "CANCELLED");
    assert_eq!(stack.seat_status("EVT-001", "I1").await, "available");
    assert_no_net_charge(&stack, &id).await;
    let again = stack
        .send(reqwest::Method::POST, cancel_url, None, &[])
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.raw);
    assert_eq!(again.code(), "not_cancellable");
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["sold"], 0);
    let url = format!(
        "{}/notifications?reservationId={id}",
        stack.notifications.url()
    );
    let kinds = eventually(Duration::from_secs(10), || async {
        let n = stack.get(url.clone()).await;
        let kinds: Vec<String> = n
            .body
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["kind"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        kinds
            .contains(&"reservation_cancelled".to_owned())
            .then_some(kinds)
    })
    .await;
    assert!(kinds.is_some(), "cancellation notification not delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_finishes_a_dead_replicas_saga() {
    let flags = ["--saga-lease-ms", "1500", "--recovery-interval-ms", "300"];
    let mut stack = Stack::start(&flags);
    let other =
        Stack::start_reservations(&stack.redis, &stack.payments, &stack.notifications, &flags);
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 3000}))
        .await;
    let client = stack.http.clone();
    let url = format!("{}/api/reservations", stack.res.url());
    let inflight = tokio::spawn(async move {
        client
            .post(url)
            .json(&seat_body("EVT-001", "J2", "replica@x.io", 60.0))
            .send()
            .await
    });
    let list_url = format!("{}/api/reservations?userEmail=replica@x.io", other.url());
    let id = eventually(Duration::from_secs(5), || async {
        let l = stack.get(list_url.clone()).await;
        (l.body[0]["status"] == "PAYMENT_PENDING")
            .then(|| l.body[0]["reservationId"].as_str().unwrap().to_owned())
    })
    .await
    .expect("saga never reached PAYMENT_PENDING");
    stack.res.kill();
    let _ = inflight.await;
    stack.chaos_reset(&stack.payments.url()).await;

    let res_url = format!("{}/api/reservations/{id}", other.url());
    let end = eventually(Duration::from_secs(15), || async {
        let r = stack.get(res_url.clone()).await;
        let s = r.body["status"].as_str().unwrap_or("").to_owned();
        (s == "CONFIRMED" || s == "FAILED").then_some(s)
    })
    .await
    .expect("the surviving replica did not finish the saga");
    if end == "FAILED" {
        assert_no_net_charge(&stack, &id).await;
    }
    let audit = stack.get(format!("{}/admin/audit", other.url())).await;
    assert_eq!(audit.body["ok"], true, "{}", audit.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charged_but_unconfirmed_saga_is_confirmed_after_a_crash() {
    let mut stack = Stack::start(&["--saga-lease-ms", "1500", "--recovery-interval-ms", "300"]);
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 1500}))
        .await;
    let client = stack.http.clone();
    let url = format!("{}/api/reservations", stack.res.url());
    let inflight = tokio::spawn(async move {
        client
            .post(url)
            .json(&seat_body("EVT-001", "J3", "charged@x.io", 60.0))
            .send()
            .await
    });
    let list_url = format!(
        "{}/api/reservations?userEmail=charged@x.io",
        stack.res.url()
    );
    let id = eventually(Duration::from_secs(5), || async {
        let l = stack.get(list_url.clone()).await;
        (l.body[0]["status"] == "PAYMENT_PENDING")
            .then(|| l.body[0]["reservationId"].as_str().unwrap().to_owned())
    })
    .await
    .expect("saga never reached PAYMENT_PENDING");
    // The inventory store becomes unreachable while the charge is in flight: the charge lands,
    // the confirmation cannot be written.
    stack
        .chaos(&stack.res.url(), json!({"inventoryDown": true}))
        .await;
    let answer = inflight.await.expect("task").expect("answer");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"], "inventory_unavailable");
    assert_eq!(body["reservationId"], id.as_str());
    assert_eq!(stack.payment(&id).await.body["status"], "charged");

    // Crash, restart: recovery sees the charge and confirms (seats still payment-pending).
    stack.res.kill();
    stack.chaos_reset(&stack.payments.url()).await;
    stack.res.restart();
    let confirmed = eventually(Duration::from_secs(15), || async {
        (stack.reservation(&id).await["status"] == "CONFIRMED").then_some(())
    })
    .await;
    assert!(
        confirmed.is_some(),
        "recovery did not confirm a charged saga"
    );
    assert_eq!(stack.seat_status("EVT-001", "J3").await, "sold");
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["sold"], 1);
    let url = format!(
        "{}/notifications?reservationId={id}",
        stack.notifications.url()
    );
    let delivered = eventually(Duration::from_secs(10), || async {
        let n = stack.get(url.clone()).await;
        n.body
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(())
    })
    .await;
    assert!(
        delivered.is_some(),
        "confirmation notification not delivered"
    );
}

/// Payments keeps its ledger in Redis: a charge taken before a payments restart is still known
/// after it, so recovery's "ask payments, then refund" finds and refunds it (with a ledger in
/// process memory, the restarted payments answered 404 and the charge was never refunded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_taken_before_a_payments_restart_is_refunded_after_it() {
    let flags = [
        "--request-deadline-ms",
        "2000",
        "--saga-lease-ms",
        "1500",
        "--recovery-interval-ms",
        "300",
    ];
    let mut stack = Stack::start(&flags);
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 20000}))
        .await;
    let client = stack.http.clone();
    let url = format!("{}/api/reservations", stack.res.url());
    let inflight = tokio::spawn(async move {
        client
            .post(url)
            .json(&seat_body("EVT-001", "D9", "restart@x.io", 64.0))
            .send()
            .await
    });
    let list_url = format!(
        "{}/api/reservations?userEmail=restart@x.io",
        stack.res.url()
    );
    let id = eventually(Duration::from_secs(5), || async {
        let l = stack.get(list_url.clone()).await;
        (l.body[0]["status"] == "PAYMENT_PENDING")
            .then(|| l.body[0]["reservationId"].as_str().unwrap_or("").to_owned())
    })
    .await
    .expect("saga never reached PAYMENT_PENDING");
    // The reservations process dies mid-charge; the charge lands at payments anyway.
    stack.res.kill();
    let _ = inflight.await;
    stack.chaos_reset(&stack.payments.url()).await;
    let charged = stack
        .send(
            reqwest::Method::POST,
            format!("{}/payments", stack.payments.url()),
            Some(json!({"reservationId": id, "amount": 64.0, "userEmail": "restart@x.io"})),
            &[],
        )
        .await;
    assert_eq!(charged.status, StatusCode::CREATED, "{}", charged.raw);
    let payment_id = charged.body["paymentId"].clone();

    // Payments restarts, then reservations: recovery asks, finds the charge, and (the request's
    // confirm deadline being long past) refunds it.
    stack.payments.restart();
    // Past the request's confirm deadline (2 s): recovery can only refund.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stack.res.restart();
    let end = eventually(Duration::from_secs(15), || async {
        let s = stack.reservation(&id).await["status"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (s == "FAILED" || s == "CONFIRMED").then_some(s)
    })
    .await
    .expect("saga not finished after the restarts");
    assert_eq!(end, "FAILED");
    let p = stack.payment(&id).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.raw);
    assert_eq!(p.body["status"], "refunded", "{}", p.raw);
    assert_eq!(p.body["paymentId"], payment_id);
    assert_eq!(stack.seat_status("EVT-001", "D9").await, "available");
    stack.audit_ok("EVT-001").await;
}
