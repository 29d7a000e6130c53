//! Bad input never changes inventory: every case gets its documented status and error code, and
//! the audit (counters of every event) is identical before and after.

mod common;
mod reservations_support;

use reqwest::StatusCode;
use serde_json::{json, Value};

use reservations_support::Stack;

/// (label, raw body, expected status, expected error code, expected field)
fn cases() -> Vec<(
    &'static str,
    String,
    u16,
    &'static str,
    Option<&'static str>,
)> {
    let ok = json!({"eventId":"EVT-001","seatId":"A1","userEmail":"a@b.c","amount":50.0});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b.to_string()
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b.to_string()
    };
    let ga = |q: Value| {
        json!({"eventId":"EVT-002","quantity":q,"userEmail":"a@b.c","amount":5}).to_string()
    };
    vec![
        (
            "malformed json",
            "{\"eventId\": ".into(),
            400,
            "invalid_json",
            None,
        ),
        ("not json at all", "hello".into(), 400, "invalid_json", None),
        ("empty body", "".into(), 400, "invalid_json", None),
        (
            "array body",
            "[1,2]".into(),
            422,
            "invalid_request",
            Some("body"),
        ),
        (
            "missing eventId",
            without("eventId"),
            422,
            "invalid_request",
            Some("eventId"),
        ),
        (
            "eventId number",
            with("eventId", json!(7)),
            422,
            "invalid_request",
            Some("eventId"),
        ),
        (
            "missing seat",
            without("seatId"),
            422,
            "invalid_request",
            Some("seatId"),
        ),
        (
            "seatId number",
            with("seatId", json!(1)),
            422,
            "invalid_request",
            Some("seatId"),
        ),
        (
            "seatId with quantity",
            with("quantity", json!(1)),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "seatId with seats",
            with("seats", json!(["A2"])),
            422,
            "invalid_request",
            Some("seats"),
        ),
        (
            "missing email",
            without("userEmail"),
            422,
            "invalid_request",
            Some("userEmail"),
        ),
        (
            "empty email",
            with("userEmail", json!("")),
            422,
            "invalid_request",
            Some("userEmail"),
        ),
        (
            "malformed email",
            with("userEmail", json!("not-an-email")),
            422,
            "invalid_request",
            Some("userEmail"),
        ),
        (
            "email number",
            with("userEmail", json!(5)),
            422,
            "invalid_request",
            Some("userEmail"),
        ),
        (
            "missing amount",
            without("amount"),
            422,
            "invalid_request",
            Some("amount"),
        ),
        (
            "zero amount",
            with("amount", json!(0)),
            422,
            "invalid_request",
            Some("amount"),
        ),
        (
            "negative amount",
            with("amount", json!(-1.5)),
            422,
            "invalid_request",
            Some("amount"),
        ),
        (
            "string amount",
            with("amount", json!("50")),
            422,
            "invalid_request",
            Some("amount"),
        ),
        (
            "huge amount",
            r#"{"eventId":"EVT-001","seatId":"A1","userEmail":"a@b.c","amount":1e999}"#.into(),
            400,
            "invalid_json",
            None,
        ),
        (
            "quantity zero",
            ga(json!(0)),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "quantity negative",
            ga(json!(-2)),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "quantity too big",
            ga(json!(11)),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "quantity fractional",
            ga(json!(1.5)),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "quantity string",
            ga(json!("2")),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "duplicate seats",
            json!({"eventId":"EVT-001","seats":["A1","A1"],"userEmail":"a@b.c","amount":5})
                .to_string(),
            422,
            "invalid_request",
            Some("seats"),
        ),
        (
            "empty seats",
            json!({"eventId":"EVT-001","seats":[],"userEmail":"a@b.c","amount":5}).to_string(),
            422,
            "invalid_request",
            Some("seats"),
        ),
        (
            "quantity on numbered event",
            json!({"eventId":"EVT-001","quantity":1,"userEmail":"a@b.c","amount":5}).to_string(),
            422,
            "invalid_request",
            Some("quantity"),
        ),
        (
            "seat on GA event",
            json!({"eventId":"EVT-002","seatId":"A1","userEmail":"a@b.c","amount":5}).to_string(),
            422,
            "invalid_request",
            Some("seatId"),
        ),
        (
            "unknown event",
            with("eventId", json!("EVT-404")),
            404,
            "event_not_found",
            None,
        ),
        (
            "unknown seat",
            with("seatId", json!("Z99")),
            404,
            "seat_not_found",
            None,
        ),
        (
            "unknown seat among several",
            json!({"eventId":"EVT-001","seats":["A1","Z99"],"userEmail":"a@b.c","amount":5})
                .to_string(),
            404,
            "seat_not_found",
            None,
        ),
        (
            "too large",
            format!(
                "{{\"eventId\":\"EVT-001\",\"pad\":\"{}\"}}",
                "x".repeat(70 * 1024)
            ),
            413,
            "payload_too_large",
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let stack = Stack::start(&[]);
    let before = stack.audit().await;
    assert_eq!(before["ok"], true, "{before}");
    let url = format!("{}/api/reservations", stack.res.url());
    for (label, body, status, code, field) in cases() {
        let r = stack
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let got_status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{label}: body is not JSON: {text:?}"));
        assert_eq!(got_status, status, "{label}: {text}");
        assert_eq!(v["error"], code, "{label}: {text}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{label}: {text}"
        );
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{label}: {text}");
        }
    }

    // Other routes answer JSON errors too.
    let a = stack
        .get(format!("{}/api/reservations/nope", stack.res.url()))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "reservation_not_found");
    let a = stack
        .get(format!("{}/api/events/EVT-404", stack.res.url()))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "event_not_found");
    let a = stack
        .send(
            reqwest::Method::POST,
            format!("{}/api/reservations/nope/cancel", stack.res.url()),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "reservation_not_found");
    let a = stack
        .get(format!(
            "{}/api/reservations?userEmail=bad",
            stack.res.url()
        ))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.body["field"], "userEmail");
    let a = stack
        .send(
            reqwest::Method::POST,
            url.clone(),
            Some(json!({"eventId":"EVT-001","seatId":"A1","userEmail":"a@b.c","amount":5})),
            &[("Idempotency-Key", "has space")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.body["field"], "Idempotency-Key");
    let a = stack
        .get(format!("{}/no/such/route", stack.res.url()))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "not_found");

    let a = stack
        .send(
            reqwest::Method::DELETE,
            format!("{}/api/events", stack.res.url()),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.code(), "method_not_allowed");

    // Admin input is validated the same way.
    let a = stack
        .send(
            reqwest::Method::PUT,
            format!("{}/admin/events/E-BAD", stack.res.url()),
            Some(json!({"name": "x", "capacity": -1})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.body["field"], "capacity");

    // Service endpoints of SPEC §6.
    let health = stack.get(format!("{}/health", stack.res.url())).await;
    assert_eq!(health.body["status"], "ok");
    let ready = stack.get(format!("{}/ready", stack.res.url())).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.raw);
    let metrics = stack.get(format!("{}/metrics", stack.res.url())).await;
    assert!(
        metrics.raw.contains("reservations_saga_outcomes_total")
            && metrics.raw.contains("http_requests_total"),
        "{}",
        metrics.raw
    );

    let after = stack.audit().await;
    assert_eq!(before, after, "bad input changed the inventory");
    let list = stack
        .get(format!(
            "{}/api/reservations?userEmail=a@b.c",
            stack.res.url()
        ))
        .await;
    assert_eq!(
        list.body,
        json!([]),
        "a reservation was created: {}",
        list.raw
    );
}
