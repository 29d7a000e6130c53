//! End-to-end scenarios shared by the standalone suite and the Redis Cluster suite
//! (`cluster_mode.rs`): each takes a running [`Stack`], whatever Redis it runs on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{assert_no_net_charge, eventually, ga_body, seat_body, Stack};

/// Flags for the storms: 1,000-2,000 requests land at once on a debug build sharing 2 cores with
/// the client, so a payments slot may wait longer than the production default allows; these
/// tests are about correctness, not latency. The Redis per-call timeout is raised too, moderately:
/// all those requests share one multiplexed Redis connection, and with the default 1000 ms the
/// commands queued behind ~2,000 others overran it when the machine was busy (load average ~10
/// on 2 cores: the breaker opened and 1,335 of the 2,000 general-admission buyers got 503; at a
/// load average of ~6 the default passed). 5000 ms keeps the test about correctness.
pub const STORM_FLAGS: &[&str] = &[
    "--redis-timeout-ms",
    "5000",
    "--payments-slot-wait-ms",
    "15000",
];

/// Fires `n` reservations at once and counts the answers by (status, error code).
pub async fn storm(
    stack: &Arc<Stack>,
    n: usize,
    body: impl Fn(usize) -> serde_json::Value,
) -> HashMap<(u16, String), usize> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let stack = stack.clone();
        let barrier = barrier.clone();
        let b = body(i);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let a = stack.reserve(b).await;
            (a.status.as_u16(), a.code().to_owned())
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        let k = t.await.expect("task");
        *counts.entry(k).or_insert(0) += 1;
    }
    counts
}

pub async fn last_seat_race_has_exactly_one_winner(stack: &Arc<Stack>) {
    stack
        .put_event("RACE-1", json!({"name": "last seat", "seats": ["Z1"]}))
        .await;
    let counts = storm(stack, 1000, |i| {
        seat_body("RACE-1", "Z1", &format!("u{i}@race.test"), 40.0)
    })
    .await;
    assert_eq!(counts.get(&(201, String::new())), Some(&1), "{counts:?}");
    assert_eq!(
        counts.get(&(409, "seat_unavailable".to_owned())),
        Some(&999),
        "{counts:?}"
    );
    let ev = stack.audit_ok("RACE-1").await;
    assert_eq!(ev["sold"], 1);
    assert_eq!(ev["available"], 0);
    assert_eq!(stack.seat_status("RACE-1", "Z1").await, "sold");
}

pub async fn general_admission_sells_exactly_its_capacity(stack: &Arc<Stack>) {
    stack
        .put_event("GA-RACE", json!({"name": "ga race", "capacity": 100}))
        .await;
    let counts = storm(stack, 2000, |i| {
        ga_body("GA-RACE", 1, &format!("g{i}@race.test"), 10.0)
    })
    .await;
    assert_eq!(counts.get(&(201, String::new())), Some(&100), "{counts:?}");
    assert_eq!(
        counts.get(&(409, "sold_out".to_owned())),
        Some(&1900),
        "{counts:?}"
    );
    let ev = stack.audit_ok("GA-RACE").await;
    assert_eq!(ev["sold"], 100);
    assert_eq!(ev["confirmedSeats"], 100);
    assert_eq!(ev["available"], 0);
    // One more buyer is refused and nothing changes.
    let a = stack
        .reserve(ga_body("GA-RACE", 1, "late@race.test", 10.0))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.code(), "sold_out");
}

/// Same `Idempotency-Key` 50× at once → one reservation, one charge, the same body; then a
/// replay, a reused key (422) and a failed first request replayed as the same failure. Uses seats
/// H8-H10 of EVT-001.
pub async fn same_idempotency_key_fifty_times(stack: &Arc<Stack>, key: &str) {
    let charged_before = charges(stack).await;
    let sold_before = stack.audit_ok("EVT-001").await["sold"]
        .as_i64()
        .expect("sold");
    // Slow the charge a little so the duplicates really overlap the first request.
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 300}))
        .await;
    let body = seat_body("EVT-001", "H8", "idem@x.io", 75.0);
    let url = format!("{}/api/reservations", stack.res.url());
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (stack, barrier, body) = (stack.clone(), barrier.clone(), body.clone());
        let (url, key) = (url.clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            stack
                .send(
                    reqwest::Method::POST,
                    url,
                    Some(body),
                    &[("Idempotency-Key", key.as_str())],
                )
                .await
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        let a = t.await.expect("task");
        match a.status {
            StatusCode::CREATED => created.push(a.raw.clone()),
            StatusCode::CONFLICT => assert_eq!(a.code(), "request_in_progress", "{}", a.raw),
            other => panic!("unexpected {other}: {}", a.raw),
        }
    }
    assert!(!created.is_empty(), "no request succeeded");
    assert!(created.iter().all(|c| c == &created[0]), "different bodies");

    // After completion the same key replays the same status and body.
    let again = stack
        .send(
            reqwest::Method::POST,
            url.clone(),
            Some(body.clone()),
            &[("Idempotency-Key", key)],
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.raw, created[0]);
    // Same key, other body.
    let other = stack
        .send(
            reqwest::Method::POST,
            url.clone(),
            Some(seat_body("EVT-001", "H9", "idem@x.io", 75.0)),
            &[("Idempotency-Key", key)],
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.raw
    );
    assert_eq!(other.code(), "idempotency_key_reused");

    let list = stack
        .get(format!(
            "{}/api/reservations?userEmail=idem@x.io",
            stack.res.url()
        ))
        .await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(1), "{}", list.raw);
    assert_eq!(charges(stack).await, charged_before + 1, "one charge");
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["sold"].as_i64(), Some(sold_before + 1));

    // A failed first request is replayed as the same failure.
    stack.chaos_reset(&stack.payments.url()).await;
    let declined_key = format!("{key}-declined");
    let declined = seat_body("EVT-001", "H10", "idem@x.io", 50_000.0);
    for _ in 0..2 {
        let a = stack
            .send(
                reqwest::Method::POST,
                url.clone(),
                Some(declined.clone()),
                &[("Idempotency-Key", &declined_key)],
            )
            .await;
        assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{}", a.raw);
        assert_eq!(a.code(), "payment_declined");
    }
}

/// Charges made so far, per payments' ledger summary.
async fn charges(stack: &Stack) -> u64 {
    let summary = stack
        .get(format!("{}/admin/payments/summary", stack.payments.url()))
        .await;
    assert_eq!(summary.status, StatusCode::OK, "{}", summary.raw);
    summary.body["charged"].as_u64().expect("charged")
}

/// Flags for [`killed_mid_charge_the_saga_is_finished_after_restart`].
pub const CRASH_FLAGS: &[&str] = &["--saga-lease-ms", "1500", "--recovery-interval-ms", "300"];

/// The reservations process killed while the charge is in flight; after a restart recovery ends
/// the saga, confirmed with a charge or failed without one. Uses seat J1 of EVT-001; the stack
/// runs with [`CRASH_FLAGS`].
pub async fn killed_mid_charge_the_saga_is_finished_after_restart(stack: &mut Stack) {
    // The charge will be in flight for 3 s: the process dies while the saga is PAYMENT_PENDING.
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 3000}))
        .await;
    let client = stack.http.clone();
    let url = format!("{}/api/reservations", stack.res.url());
    let inflight = tokio::spawn(async move {
        client
            .post(url)
            .json(&seat_body("EVT-001", "J1", "crash@x.io", 60.0))
            .send()
            .await
    });
    let list_url = format!("{}/api/reservations?userEmail=crash@x.io", stack.res.url());
    let id = eventually(Duration::from_secs(5), || async {
        let l = stack.get(list_url.clone()).await;
        (l.body[0]["status"] == "PAYMENT_PENDING")
            .then(|| l.body[0]["reservationId"].as_str().unwrap().to_owned())
    })
    .await
    .expect("saga never reached PAYMENT_PENDING");
    stack.res.kill();
    assert!(
        inflight.await.expect("task").is_err(),
        "the request should have died with the process"
    );
    assert_eq!(stack.seat_status_direct("EVT-001", "J1").await, "held");

    stack.chaos_reset(&stack.payments.url()).await;
    stack.res.restart();
    let end = eventually(Duration::from_secs(15), || async {
        let r = stack.reservation(&id).await;
        let s = r["status"].as_str().unwrap_or("").to_owned();
        (s == "CONFIRMED" || s == "FAILED").then_some(s)
    })
    .await
    .expect("saga left unfinished after restart");
    if end == "FAILED" {
        assert_no_net_charge(stack, &id).await;
        assert_eq!(stack.seat_status("EVT-001", "J1").await, "available");
    } else {
        assert_eq!(stack.payment(&id).await.body["status"], "charged");
        assert_eq!(stack.seat_status("EVT-001", "J1").await, "sold");
    }
    let history = stack.reservation(&id).await["history"].clone();
    assert!(
        history.as_array().is_some_and(|h| h.len() >= 3),
        "{history}"
    );
    stack.audit_ok("EVT-001").await;
}

/// Notifications down: the reservation still confirms (`queued`); once they are back the outbox
/// delivers it and marks it `sent`. Uses seat D4 of EVT-001.
pub async fn notifications_down_then_up_still_confirms_and_delivers_later(stack: &mut Stack) {
    stack.notifications.kill();
    let a = stack
        .reserve(seat_body("EVT-001", "D4", "n@x.io", 50.0))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.raw);
    assert_eq!(a.body["notification"], "queued");
    let id = a.body["reservationId"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.reservation(&id).await["notification"], "queued");

    stack.notifications.restart();
    let url = format!(
        "{}/notifications?reservationId={id}",
        stack.notifications.url()
    );
    let delivered = eventually(Duration::from_secs(20), || async {
        let n = stack.get(url.clone()).await;
        n.body
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(n.body)
    })
    .await
    .expect("notification never delivered");
    assert_eq!(delivered[0]["kind"], "reservation_confirmed");
    let sent = eventually(Duration::from_secs(5), || async {
        (stack.reservation(&id).await["notification"] == "sent").then_some(())
    })
    .await;
    assert!(sent.is_some(), "notification field not updated to sent");
}
