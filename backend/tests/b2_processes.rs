//! `backend payments` as a real process (the binary's subcommand wiring, flags, env twins).

mod common;

use std::time::Duration;

use common::BackendProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn payments_process_serves_the_api() {
    let redis = common::RedisServer::start();
    let p = BackendProcess::start(
        "payments",
        &[],
        &[("DECLINE_ABOVE", "100"), ("REDIS_URL", &redis.url())],
    );
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

#[tokio::test]
async fn request_id_appears_in_json_logs_and_sigterm_stops_cleanly() {
    let redis = common::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("payments.log");
    let port = common::free_port();
    let mut child = std::process::Command::new(common::backend_bin())
        .args(["payments", "--listen", &format!("127.0.0.1:{port}")])
        .env("LOG_FORMAT", "json")
        .env("REDIS_URL", redis.url())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    assert!(common::wait_for_port(port, Duration::from_secs(30)));
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/payments/R9"))
        .header("x-request-id", "log-check-77")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("log-check-77"))
        .unwrap_or_else(|| panic!("request id not logged:\n{logs}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["span"]["request_id"], "log-check-77");
}

/// The ledger lives in Redis: a restarted payments process still knows what it charged and
/// refunded (a repeat charge gets the same payment; a refunded one stays refunded).
#[tokio::test]
async fn payments_keeps_its_ledger_across_a_restart() {
    let redis = common::RedisServer::start();
    let mut p = BackendProcess::start("payments", &[], &[("REDIS_URL", &redis.url())]);
    // No pooled connections: the process behind them is restarted.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let charge = |base: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{base}/payments"))
                .json(&serde_json::json!({"reservationId": "R-keep", "amount": 12.5, "userEmail": "k@x.io"}))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = charge(p.url()).await;
    assert_eq!(status, StatusCode::CREATED);
    p.restart();
    let (status, again) = charge(p.url()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["paymentId"], first["paymentId"]);
    let refund = http
        .post(format!("{}/payments/R-keep/refund", p.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), StatusCode::OK);
    p.restart();
    let got: Value = http
        .get(format!("{}/payments/R-keep", p.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "refunded", "{got}");
    assert_eq!(got["netAmount"], 0.0);
    let (status, _) = charge(p.url()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let summary: Value = http
        .get(format!("{}/admin/payments/summary", p.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["refunded"], 1, "{summary}");
    assert_eq!(summary["netAmount"], 0.0, "{summary}");
}
