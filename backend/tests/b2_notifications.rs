//! The notifications service over real HTTP (router served on a free loopback port).

use std::time::Duration;

use backend::notifications::{router, NotificationsState};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start() -> String {
    let state = NotificationsState::new().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    format!("http://{addr}")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(c: &reqwest::Client, base: &str, body: Value) -> (StatusCode, Value) {
    let r = c
        .post(format!("{base}/notifications"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn list(c: &reqwest::Client, url: String) -> Vec<Value> {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn post_is_idempotent_on_reservation_and_kind() {
    let base = start().await;
    let c = http();
    let body = json!({"reservationId": "R1", "userEmail": "a@b.c", "kind": "reservation_confirmed", "message": "hi"});
    let (s1, n1) = post(&c, &base, body.clone()).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(n1["notificationId"].is_string());
    assert_eq!(n1["reservationId"], "R1");
    assert_eq!(n1["message"], "hi");
    let (s2, n2) = post(&c, &base, body).await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(n1, n2);
    let (s3, n3) = post(
        &c,
        &base,
        json!({"reservationId": "R1", "userEmail": "a@b.c", "kind": "reservation_cancelled"}),
    )
    .await;
    assert_eq!(s3, StatusCode::CREATED);
    assert_ne!(n3["notificationId"], n1["notificationId"]);
    post(
        &c,
        &base,
        json!({"reservationId": "R2", "userEmail": "x@y.z", "kind": "reservation_confirmed"}),
    )
    .await;

    let r1 = list(&c, format!("{base}/notifications?reservationId=R1")).await;
    assert_eq!(r1.len(), 2);
    assert_eq!(r1[0]["kind"], "reservation_confirmed");
    assert_eq!(r1[1]["kind"], "reservation_cancelled");
    assert!(list(&c, format!("{base}/notifications?reservationId=none"))
        .await
        .is_empty());
    assert_eq!(list(&c, format!("{base}/notifications")).await.len(), 3);
    assert_eq!(
        list(&c, format!("{base}/notifications?limit=1")).await[0]["reservationId"],
        "R2"
    );
    let summary: Value = c
        .get(format!("{base}/admin/notifications/summary"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary, json!({"count": 3, "duplicates": 1}));
}

#[tokio::test]
async fn rejects_bad_input() {
    let base = start().await;
    let c = http();
    let r = c
        .post(format!("{base}/notifications"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (s, e) = post(&c, &base, json!({"reservationId": "R1", "kind": "k"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"], "invalid_request");
    assert_eq!(e["field"], "userEmail");
    let r = c
        .get(format!("{base}/notifications?limit=lots"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn chaos_down_then_reset() {
    let base = start().await;
    let c = http();
    let r = c
        .put(format!("{base}/admin/chaos"))
        .json(&json!({"down": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, e) = post(
        &c,
        &base,
        json!({"reservationId": "R1", "userEmail": "a@b.c", "kind": "k"}),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["error"], "service_down");
    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = c
        .delete(format!("{base}/admin/chaos"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, _) = post(
        &c,
        &base,
        json!({"reservationId": "R1", "userEmail": "a@b.c", "kind": "k"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let base = start().await;
    let c = http();
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/no/such/route", 404, "not_found"),
        (
            reqwest::Method::DELETE,
            "/notifications",
            405,
            "method_not_allowed",
        ),
        (reqwest::Method::PUT, "/health", 405, "method_not_allowed"),
    ] {
        let resp = c
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], code, "{method} {path}");
    }
}
