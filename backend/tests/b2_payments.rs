//! The payments service over real HTTP (router served on a free loopback port): idempotent
//! charges, declines, refunds, the refund-before-charge race, input validation, chaos, request
//! ids and metrics.

use std::time::{Duration, Instant};

mod common;

use backend::payments::{router, PaymentsState};
use backend::store::StoreConfig;
use common::RedisServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Serves a fresh payments service on 127.0.0.1:<free port>, its ledger on a fresh Redis;
/// returns its base URL and the Redis (stopped when dropped).
async fn start() -> (String, RedisServer) {
    let redis = RedisServer::start();
    let state = PaymentsState::new(10_000.0, &redis.url(), StoreConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    (format!("http://{addr}"), redis)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn charge(c: &reqwest::Client, base: &str, id: &str, amount: f64) -> (StatusCode, Value) {
    send(
        c,
        reqwest::Method::POST,
        format!("{base}/payments"),
        Some(json!({"reservationId": id, "amount": amount, "userEmail": "a@b.c"})),
    )
    .await
}

async fn chaos(c: &reqwest::Client, base: &str, body: Value) {
    let (s, _) = send(
        c,
        reqwest::Method::PUT,
        format!("{base}/admin/chaos"),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn charge_is_idempotent() {
    let (base, _redis) = start().await;
    let c = http();
    let (s1, p1) = charge(&c, &base, "R-1", 50.0).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(p1["status"], "charged");
    assert_eq!(p1["reservationId"], "R-1");
    assert_eq!(p1["amount"], 50.0);
    assert_eq!(p1["netAmount"], 50.0);
    assert!(p1["createdAt"].is_string());
    let (s2, p2) = charge(&c, &base, "R-1", 50.0).await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(p1["paymentId"], p2["paymentId"]);
    let (s, g) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/payments/R-1"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(g["paymentId"], p1["paymentId"]);
    // Another amount for the same reservation is a conflict, not a second charge.
    let (s3, e) = charge(&c, &base, "R-1", 51.0).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(e["error"], "payment_mismatch");
    let (_, sum) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/admin/payments/summary"),
        None,
    )
    .await;
    assert_eq!(sum["charged"], 1);
    assert_eq!(sum["netAmount"], 50.0);
}

#[tokio::test]
async fn concurrent_duplicate_charges_charge_once() {
    let (base, _redis) = start().await;
    let c = http();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, base) = (c.clone(), base.clone());
            tokio::spawn(async move { charge(&c, &base, "R-dup", 10.0).await })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (s, p) = t.await.unwrap();
        if s == StatusCode::CREATED {
            created += 1;
        } else {
            assert_eq!(s, StatusCode::OK);
        }
        ids.insert(p["paymentId"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn decline_above_10000_is_remembered() {
    let (base, _redis) = start().await;
    let c = http();
    let (s, ok) = charge(&c, &base, "R-max", 10_000.0).await;
    assert_eq!(s, StatusCode::CREATED, "{ok}");
    let (s, e) = charge(&c, &base, "R-big", 10_000.5).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(e["error"], "payment_declined");
    assert!(e["message"].is_string());
    let (s, _) = charge(&c, &base, "R-big", 10_000.5).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    let (s, g) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/payments/R-big"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(g["status"], "declined");
    assert_eq!(g["netAmount"], 0.0);
    let (s, e) = send(
        &c,
        reqwest::Method::POST,
        format!("{base}/payments/R-big/refund"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"], "not_refundable");
}

#[tokio::test]
async fn refund_is_idempotent_and_final() {
    let (base, _redis) = start().await;
    let c = http();
    charge(&c, &base, "R-2", 75.0).await;
    for _ in 0..2 {
        let (s, r) = send(
            &c,
            reqwest::Method::POST,
            format!("{base}/payments/R-2/refund"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(r["status"], "refunded");
        assert_eq!(r["netAmount"], 0.0);
    }
    let (_, g) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/payments/R-2"),
        None,
    )
    .await;
    assert_eq!(g["status"], "refunded");
    let (s, e) = charge(&c, &base, "R-2", 75.0).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"], "already_refunded");
    let (s, e) = send(
        &c,
        reqwest::Method::POST,
        format!("{base}/payments/R-unknown/refund"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["error"], "payment_not_found");
    let (s, e) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/payments/R-nothing"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["error"], "payment_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_arriving_while_charge_sleeps_wins() {
    let (base, _redis) = start().await;
    let c = http();
    chaos(&c, &base, json!({"latencyMs": 1500})).await;
    let slow = {
        let (c, base) = (c.clone(), base.clone());
        tokio::spawn(async move { charge(&c, &base, "R-race", 20.0).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The charge is asleep in chaos latency; the compensation arrives first.
    chaos(&c, &base, json!({"latencyMs": 0})).await;
    let (s, _) = send(
        &c,
        reqwest::Method::POST,
        format!("{base}/payments/R-race/refund"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, e) = slow.await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"], "already_refunded");
    let (s, _) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/payments/R-race"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, sum) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/admin/payments/summary"),
        None,
    )
    .await;
    assert_eq!(sum["netAmount"], 0.0);
    assert_eq!(sum["refundsBeforeCharge"], 1);
}

#[tokio::test]
async fn bad_input_table() {
    let (base, _redis) = start().await;
    let c = http();
    let cases: Vec<(&str, StatusCode, &str, Option<&str>)> = vec![
        ("{", StatusCode::BAD_REQUEST, "invalid_json", None),
        ("", StatusCode::BAD_REQUEST, "invalid_json", None),
        (
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("body"),
        ),
        (
            r#"{"amount": 5, "userEmail": "a@b.c"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("reservationId"),
        ),
        (
            r#"{"reservationId": "", "amount": 5, "userEmail": "a@b.c"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("reservationId"),
        ),
        (
            r#"{"reservationId": "R", "amount": -1, "userEmail": "a@b.c"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("amount"),
        ),
        (
            r#"{"reservationId": "R", "amount": 0, "userEmail": "a@b.c"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("amount"),
        ),
        (
            r#"{"reservationId": "R", "amount": "5", "userEmail": "a@b.c"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("amount"),
        ),
        (
            r#"{"reservationId": "R", "amount": 5, "userEmail": "nobody"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("userEmail"),
        ),
        (
            r#"{"reservationId": "R", "amount": 5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("userEmail"),
        ),
    ];
    for (body, status, code, field) in cases {
        let resp = c
            .post(format!("{base}/payments"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], code, "{body}");
        assert!(v["message"].is_string(), "{body}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{body}");
        }
    }
}

#[tokio::test]
async fn chaos_down_spares_admin_and_metrics() {
    let (base, _redis) = start().await;
    let c = http();
    chaos(&c, &base, json!({"down": true})).await;
    let (s, e) = charge(&c, &base, "R-3", 1.0).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["error"], "service_down");
    for path in ["/health", "/ready"] {
        let (s, _) = send(&c, reqwest::Method::GET, format!("{base}{path}"), None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    let (s, settings) = send(
        &c,
        reqwest::Method::GET,
        format!("{base}/admin/chaos"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(settings["down"], true);
    let resp = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (s, reset) = send(
        &c,
        reqwest::Method::DELETE,
        format!("{base}/admin/chaos"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(reset["down"], false);
    let (s, h) = send(&c, reqwest::Method::GET, format!("{base}/health"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h, json!({"status": "ok"}));
    let (s, _) = charge(&c, &base, "R-3", 1.0).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn chaos_admin_validates() {
    let (base, _redis) = start().await;
    let c = http();
    let put = |body: &'static str| {
        let c = c.clone();
        let url = format!("{base}/admin/chaos");
        async move {
            let r = c.put(url).body(body).send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, e) = put("{nope").await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (s, e) = put(r#"{"errorRate": 2}"#).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request"))
    );
    let (s, e) = put(r#"{"bogus": 1}"#).await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("bogus"))
    );
    let (s, v) = put(r#"{"latencyMs": 10, "errorRate": 0.1}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"down": false, "latencyMs": 10, "errorRate": 0.1, "inventoryDown": false})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_latency_delays_api_but_not_health() {
    let (base, _redis) = start().await;
    let c = http();
    chaos(&c, &base, json!({"latencyMs": 800})).await;
    let started = Instant::now();
    let (s, _) = charge(&c, &base, "R-4", 1.0).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(800));
    let started = Instant::now();
    let (s, _) = send(&c, reqwest::Method::GET, format!("{base}/health"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_error_rate_fails_that_fraction() {
    let (base, _redis) = start().await;
    let c = http();
    chaos(&c, &base, json!({"errorRate": 1.0})).await;
    let (s, e) = charge(&c, &base, "R-5", 1.0).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(e["error"], "chaos_error");
    chaos(&c, &base, json!({"errorRate": 0.5})).await;
    let mut errors = 0;
    for i in 0..200 {
        let (s, _) = send(
            &c,
            reqwest::Method::GET,
            format!("{base}/payments/none-{i}"),
            None,
        )
        .await;
        match s {
            StatusCode::INTERNAL_SERVER_ERROR => errors += 1,
            StatusCode::NOT_FOUND => {}
            other => panic!("unexpected {other}"),
        }
    }
    // Binomial(200, 0.5): 60..=140 is more than 5 standard deviations wide.
    assert!((60..=140).contains(&errors), "{errors} errors of 200");
}

#[tokio::test]
async fn request_id_is_echoed_and_metrics_use_route_templates() {
    let (base, _redis) = start().await;
    let c = http();
    let resp = c
        .get(format!("{base}/payments/R-x"))
        .header("x-request-id", "test-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "test-req-42");
    let resp = c.get(format!("{base}/health")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"http_requests_total{route="/payments/{reservationId}",service="payments",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_undecodable_ids_get_json_errors() {
    let (base, _redis) = start().await;
    let c = http();
    let cases = [
        (
            reqwest::Method::GET,
            "/payments/%FF%FE",
            404,
            "payment_not_found",
        ),
        (
            reqwest::Method::POST,
            "/payments/%FF/refund",
            404,
            "payment_not_found",
        ),
        (reqwest::Method::GET, "/no/such/route", 404, "not_found"),
        (
            reqwest::Method::DELETE,
            "/payments",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::DELETE,
            "/health",
            405,
            "method_not_allowed",
        ),
        (reqwest::Method::POST, "/metrics", 405, "method_not_allowed"),
        (
            reqwest::Method::POST,
            "/admin/chaos",
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let resp = c
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let json = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        assert!(json, "{method} {path}: not JSON");
        if status == 405 {
            assert!(resp.headers().contains_key("allow"), "{method} {path}");
        }
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], code, "{method} {path}");
        assert!(v["message"].is_string(), "{method} {path}");
    }
}
