//! A whole reservations stack for the reservations tests: real redis-server (standalone, or a
//! six-node Redis Cluster), real payments, notifications and reservations processes, and a
//! reqwest client with helpers.
#![allow(dead_code)]

pub mod scenarios;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{BackendProcess, RedisServer};
use backend::reservations::keys;
use redis_harness::RedisCluster;

/// The Redis a stack runs on.
pub enum Backing {
    /// One redis-server of its own.
    Standalone(RedisServer),
    /// A Redis Cluster, possibly shared by several stacks of one test.
    Cluster(Arc<RedisCluster>),
}

impl Backing {
    /// `--redis-url`: the server, or every node as seeds.
    pub fn url(&self) -> String {
        match self {
            Backing::Standalone(r) => r.url(),
            Backing::Cluster(c) => c.urls().join(","),
        }
    }

    /// `--redis-mode`.
    pub fn mode(&self) -> &'static str {
        match self {
            Backing::Standalone(_) => "standalone",
            Backing::Cluster(_) => "cluster",
        }
    }

    /// The environment that points a backend process at this Redis.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("REDIS_URL", self.url()),
            ("REDIS_MODE", self.mode().to_owned()),
        ]
    }

    fn standalone(&mut self) -> &mut RedisServer {
        match self {
            Backing::Standalone(r) => r,
            Backing::Cluster(_) => panic!("a standalone-Redis helper used on a cluster stack"),
        }
    }

    /// Kills the standalone server.
    pub fn stop(&mut self) {
        self.standalone().stop();
    }

    /// Restarts the standalone server (same port, empty).
    pub fn restart(&mut self) {
        self.standalone().restart();
    }
}

/// Redis + payments + notifications + reservations.
pub struct Stack {
    pub redis: Backing,
    pub payments: BackendProcess,
    pub notifications: BackendProcess,
    pub res: BackendProcess,
    pub http: reqwest::Client,
}

/// An HTTP answer: status, headers, JSON body (Null if not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl Stack {
    /// Starts everything on a redis-server of its own; `res_args` are extra flags for `backend
    /// reservations`.
    pub fn start(res_args: &[&str]) -> Self {
        Self::start_on(Backing::Standalone(RedisServer::start()), res_args)
    }

    /// Starts the services on `redis`.
    pub fn start_on(redis: Backing, res_args: &[&str]) -> Self {
        let env = redis.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let payments = BackendProcess::start("payments", &[], &env);
        let notifications = BackendProcess::start("notifications", &[], &[]);
        let res = Self::start_reservations(&redis, &payments, &notifications, res_args);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Self {
            redis,
            payments,
            notifications,
            res,
            http,
        }
    }

    /// Starts one more reservations process against the same Redis and services.
    pub fn start_reservations(
        redis: &Backing,
        payments: &BackendProcess,
        notifications: &BackendProcess,
        res_args: &[&str],
    ) -> BackendProcess {
        let mut args = vec![
            "--payments-url".to_owned(),
            payments.url(),
            "--notifications-url".to_owned(),
            notifications.url(),
            "--outbox-max-backoff-ms".to_owned(),
            "500".to_owned(),
            "--outbox-block-ms".to_owned(),
            "200".to_owned(),
        ];
        args.extend(res_args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = redis.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        BackendProcess::start("reservations", &refs, &env)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut rb = self.http.request(method, url);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let raw = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            raw,
        }
    }

    pub async fn get(&self, url: String) -> Answer {
        self.send(reqwest::Method::GET, url, None, &[]).await
    }

    /// `POST /api/reservations`.
    pub async fn reserve(&self, body: Value) -> Answer {
        self.send(
            reqwest::Method::POST,
            format!("{}/api/reservations", self.res.url()),
            Some(body),
            &[],
        )
        .await
    }

    /// `PUT /admin/events/{id}` (panics unless 200).
    pub async fn put_event(&self, id: &str, def: Value) {
        let a = self
            .send(
                reqwest::Method::PUT,
                format!("{}/admin/events/{id}", self.res.url()),
                Some(def),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    }

    /// `GET /admin/audit` body.
    pub async fn audit(&self) -> Value {
        let a = self.get(format!("{}/admin/audit", self.res.url())).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
        a.body
    }

    /// Asserts the audit is ok and returns the entry of `event_id`.
    pub async fn audit_ok(&self, event_id: &str) -> Value {
        let audit = self.audit().await;
        assert_eq!(audit["ok"], true, "audit: {audit}");
        audit["events"]
            .as_array()
            .and_then(|evs| evs.iter().find(|e| e["eventId"] == event_id).cloned())
            .unwrap_or_else(|| panic!("event {event_id} missing from audit {audit}"))
    }

    /// `PUT /admin/chaos` on a service.
    pub async fn chaos(&self, base: &str, settings: Value) {
        let a = self
            .send(
                reqwest::Method::PUT,
                format!("{base}/admin/chaos"),
                Some(settings),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    }

    /// `DELETE /admin/chaos` on a service.
    pub async fn chaos_reset(&self, base: &str) {
        let a = self
            .send(
                reqwest::Method::DELETE,
                format!("{base}/admin/chaos"),
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.raw);
    }

    /// `GET /api/reservations/{id}` body.
    pub async fn reservation(&self, id: &str) -> Value {
        self.get(format!("{}/api/reservations/{id}", self.res.url()))
            .await
            .body
    }

    /// `GET /payments/{id}` on payments.
    pub async fn payment(&self, id: &str) -> Answer {
        self.get(format!("{}/payments/{id}", self.payments.url()))
            .await
    }

    /// The raw state of one seat read straight from Redis (works while reservations is down).
    pub async fn seat_status_direct(&self, event_id: &str, seat: &str) -> String {
        let mut hget = redis::cmd("HGET");
        hget.arg(keys::event_seats(event_id)).arg(seat);
        let state: Option<String> = match &self.redis {
            Backing::Standalone(r) => {
                let client = redis::Client::open(r.url()).expect("redis url");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis connection");
                hget.query_async(&mut conn).await.expect("HGET")
            }
            Backing::Cluster(c) => {
                let client = redis::cluster::ClusterClient::new(c.urls()).expect("seeds");
                let mut conn = client.get_async_connection().await.expect("cluster");
                hget.query_async(&mut conn).await.expect("HGET")
            }
        };
        match state.as_deref().and_then(|s| s.as_bytes().first()) {
            Some(b'A') => "available",
            Some(b'S') => "sold",
            Some(_) => "held",
            None => "missing",
        }
        .to_owned()
    }

    /// The status of one seat per `GET /api/events/{id}`.
    pub async fn seat_status(&self, event_id: &str, seat: &str) -> String {
        let a = self
            .get(format!("{}/api/events/{event_id}", self.res.url()))
            .await;
        a.body["seats"]
            .as_array()
            .and_then(|s| s.iter().find(|x| x["seatId"] == seat))
            .and_then(|x| x["status"].as_str())
            .unwrap_or("missing")
            .to_owned()
    }
}

/// A reservation body for one seat.
pub fn seat_body(event: &str, seat: &str, email: &str, amount: f64) -> Value {
    json!({"eventId": event, "seatId": seat, "userEmail": email, "amount": amount})
}

/// A general-admission reservation body.
pub fn ga_body(event: &str, quantity: u32, email: &str, amount: f64) -> Value {
    json!({"eventId": event, "quantity": quantity, "userEmail": email, "amount": amount})
}

/// Polls `check` every 100 ms until it returns Some, up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No net charge for the reservation per payments (never charged, declined or refunded).
pub async fn assert_no_net_charge(stack: &Stack, res_id: &str) {
    let p = stack.payment(res_id).await;
    if p.status == StatusCode::NOT_FOUND {
        return;
    }
    assert_eq!(p.status, StatusCode::OK, "{}", p.raw);
    let status = p.body["status"].as_str().unwrap_or("");
    assert!(
        status == "refunded" || status == "declined" || p.body["netAmount"] == 0.0,
        "payment of {res_id} still charged: {}",
        p.raw
    );
}
