//! The double-fault gaps of issue 10, each injected for real: a second fault at the worst moment
//! of the saga. Each test failed on the code before the fix (the failure is quoted above it).

mod common;
mod reservations_support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use reservations_support::{assert_no_net_charge, eventually, seat_body, Stack};

/// Waits until the user's newest reservation is PAYMENT_PENDING and returns its id.
async fn pending_id(stack: &Stack, email: &str) -> String {
    let list_url = format!("{}/api/reservations?userEmail={email}", stack.res.url());
    eventually(Duration::from_secs(10), || async {
        let l = stack.get(list_url.clone()).await;
        (l.body[0]["status"] == "PAYMENT_PENDING")
            .then(|| l.body[0]["reservationId"].as_str().unwrap_or("").to_owned())
    })
    .await
    .expect("saga never reached PAYMENT_PENDING")
}

/// Gap 1. Payments is slow (the charge times out: outcome unknown) and, at the same time, the
/// inventory store refuses writes, so the "never confirm, refund" decision cannot be written
/// when the 504 is answered. The process then dies and the charge turns out to have landed.
/// Recovery must not confirm a saga whose client was told 504.
///
/// Before the fix: `settle_unknown` wrote the refund mark with a raw HSET (which failed), and
/// recovery asked payments, saw the charge and confirmed: "told 504, ended CONFIRMED".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap1_a_504_is_never_followed_by_a_confirm_even_if_the_refund_mark_cannot_be_written() {
    let flags = [
        "--request-deadline-ms",
        "3000",
        "--payments-attempt-timeout-ms",
        "1000",
        "--payments-max-attempts",
        "1",
        "--recovery-interval-ms",
        "300",
    ];
    let mut stack = Stack::start(&flags);
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 20000}))
        .await;
    let body = seat_body("EVT-001", "B5", "gap1@x.io", 42.0);
    let client = stack.http.clone();
    let url = format!("{}/api/reservations", stack.res.url());
    let inflight = tokio::spawn(async move { client.post(url).json(&body).send().await });
    let id = pending_id(&stack, "gap1@x.io").await;

    // Second fault: the store refuses every write from now on (the refund mark included).
    stack
        .chaos(&stack.res.url(), json!({"inventoryDown": true}))
        .await;
    let answer = inflight.await.expect("task").expect("answer");
    let status = answer.status();
    assert!(
        status.is_client_error() || status.is_server_error(),
        "the client must have been told a failure, got {status}"
    );

    // Third: the process dies, and the charge turns out to have landed.
    stack.res.kill();
    stack.chaos_reset(&stack.payments.url()).await;
    let charge = stack
        .send(
            reqwest::Method::POST,
            format!("{}/payments", stack.payments.url()),
            Some(json!({"reservationId": id, "amount": 42.0, "userEmail": "gap1@x.io"})),
            &[],
        )
        .await;
    assert!(charge.status.is_success(), "{}", charge.raw);

    stack.res.restart();
    let end = eventually(Duration::from_secs(20), || async {
        let s = stack.reservation(&id).await["status"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (s == "CONFIRMED" || s == "FAILED").then_some(s)
    })
    .await
    .expect("saga never finished");
    assert_eq!(end, "FAILED", "told {status}, the saga must never confirm");
    let refunded = eventually(Duration::from_secs(10), || async {
        (stack.payment(&id).await.body["status"] == "refunded").then_some(())
    })
    .await;
    assert!(refunded.is_some(), "the late charge was not refunded");
    assert_eq!(stack.seat_status("EVT-001", "B5").await, "available");
    stack.audit_ok("EVT-001").await;
}

/// Gap 2. The charge succeeds, but the event was reset meanwhile (the seats are no longer the
/// saga's), so the request path must refund, and the refund is slow. The answer must still
/// come within the request deadline; the refund goes on in the background.
///
/// Before the fix: `compensate_after_charge` started a fresh full deadline for the refund inside
/// the request, and the answer came after about charge + a whole second deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap2_a_slow_refund_after_the_charge_does_not_overrun_the_request_deadline() {
    let stack = Stack::start(&["--request-deadline-ms", "4000"]);
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 1500}))
        .await;
    let body = seat_body("EVT-001", "C7", "gap2@x.io", 30.0);
    let client = stack.http.clone();
    let url = format!("{}/api/reservations", stack.res.url());
    let started = Instant::now();
    let inflight = tokio::spawn(async move { client.post(url).json(&body).send().await });
    let id = pending_id(&stack, "gap2@x.io").await;
    // While the charge is in flight: the event is reset, and payments becomes very slow for
    // every later call (the refund).
    let seats: Vec<String> = ('A'..='J')
        .flat_map(|r| (1..=10).map(move |n| format!("{r}{n}")))
        .collect();
    stack
        .put_event("EVT-001", json!({"name": "reset", "seats": seats}))
        .await;
    stack
        .chaos(&stack.payments.url(), json!({"latencyMs": 20000}))
        .await;
    let answer = inflight.await.expect("task").expect("answer");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4_700),
        "answered after {took:?}, past the 4 s request deadline ({})",
        answer.status()
    );
    assert_ne!(answer.status(), StatusCode::CREATED);

    // The refund finishes in the background once payments is fast again.
    stack.chaos_reset(&stack.payments.url()).await;
    let done = eventually(Duration::from_secs(30), || async {
        (stack.reservation(&id).await["status"] == "FAILED").then_some(())
    })
    .await;
    assert!(done.is_some(), "saga not compensated");
    assert_no_net_charge(&stack, &id).await;
}
