//! `backend payments` as a real process (the binary's subcommand wiring, flags, env twins).

mod common;

use std::time::Duration;

use common::BackendProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn payments_process_serves_the_api() {
    let p = BackendProcess::start("payments", &[], &[("DECLINE_ABOVE", "100")]);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = p.url();
    let r = c
        .post(format!("{base}/payments"))
        .header("x-request-id", "proc-1")
        .json(&json!({"reservationId": "R1", "amount": 50.0, "userEmail": "a@b.c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-request-id"], "proc-1");
    // DECLINE_ABOVE (env twin of --decline-above) is honoured.
    let r = c
        .post(format!("{base}/payments"))
        .json(&json!({"reservationId": "R2", "amount": 101.0, "userEmail": "a@b.c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let health: Value = c
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("payments_operations_total"), "{metrics}");
}
