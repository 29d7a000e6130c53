//! Model-based test of the saga state machine: proptest draws random cases — buyers racing for a
//! few seats, each with a payment behaviour (fast, slow past the client's timeout but landing,
//! charged then 500, 503, declined), plus faults at random moments (the inventory store
//! refusing calls, payments down, the replica crashing) — and runs them against the real saga
//! code, the real Lua scripts on a real redis-server and the real payments ledger. A crash is a
//! whole Tokio runtime dropped mid-flight (request tasks, settlers, lease renewals). Another
//! replica then recovers until every saga has ended, and the invariants are checked:
//!
//! - no oversell: the audit balances every event and `sold` equals the CONFIRMED places;
//! - no net charge on a reservation that is not CONFIRMED, and no CONFIRMED one without its
//!   charge;
//! - a client told a failure never sees the saga confirm, one told 201 always does;
//! - every saga ends (bounded wait).
//!
//! `SAGA_MODEL_CASES` sets the number of cases (default 8, well under a minute).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use backend::chaos::{Chaos, ChaosSettings};
use backend::payments::{router, PaymentsState};
use backend::payments_client::{PaymentsClient, PaymentsClientConfig};
use backend::reservations::admin;
use backend::reservations::error::SagaError;
use backend::reservations::inventory::Inventory;
use backend::reservations::model::ReservationStatus;
use backend::reservations::payer::Payer;
use backend::reservations::saga::{Reserved, Saga, SagaConfig, SagaMetrics};
use backend::reservations::validation::{ReservationRequest, Selection};
use backend::reservations::{recovery, sweeper};
use backend::store::{Store, StoreConfig};
use backend::telemetry::Metrics;
use common::RedisServer;

/// The request deadline of the model's replicas (short, so cases are quick).
const DEADLINE_MS: u64 = 1_000;
const LEASE_MS: u64 = 600;
/// How a charge behaves, chosen by its amount (see [`payments_behaviour`]).
const FAST: f64 = 10.0;
const SLOW: f64 = 11.0;
const CHARGED_THEN_500: f64 = 12.0;
const UNAVAILABLE_503: f64 = 13.0;
const DECLINED: f64 = 20_000.0;
/// Slow like [`SLOW`], and payments cannot answer about it (status, refund: 503) for
/// [`UNSETTLED_FOR`] after the charge arrived: the saga must decide without knowing.
const UNSETTLED: f64 = 14.0;
const UNSETTLED_FOR: Duration = Duration::from_millis(900);

/// Charges seen by the payments stand-in: reservation id → (amount, when).
static SEEN: std::sync::OnceLock<Mutex<std::collections::HashMap<String, (f64, Instant)>>> =
    std::sync::OnceLock::new();

fn seen() -> &'static Mutex<std::collections::HashMap<String, (f64, Instant)>> {
    SEEN.get_or_init(Default::default)
}

#[derive(Debug, Clone)]
struct Buyer {
    /// `Some(seat)` for the seated event, `None` for one general-admission place.
    seat: Option<&'static str>,
    amount: f64,
    start_ms: u64,
}

#[derive(Debug, Clone)]
struct Case {
    buyers: Vec<Buyer>,
    /// (from, for) in ms: the replica's inventory store refuses every call.
    inventory_down: Option<(u64, u64)>,
    /// (from, for) in ms: payments answers 503 to everything.
    payments_down: Option<(u64, u64)>,
    /// The replica dies then.
    crash_at_ms: Option<u64>,
}

fn buyer() -> impl Strategy<Value = Buyer> {
    (
        prop_oneof![
            Just(Some("S1")),
            Just(Some("S2")),
            Just(None::<&'static str>)
        ],
        prop_oneof![
            3 => Just(FAST),
            2 => Just(SLOW),
            2 => Just(UNSETTLED),
            1 => Just(CHARGED_THEN_500),
            1 => Just(UNAVAILABLE_503),
            1 => Just(DECLINED),
        ],
        0u64..200,
    )
        .prop_map(|(seat, amount, start_ms)| Buyer {
            seat,
            amount,
            start_ms,
        })
}

fn window(p: f64, from: u64, len: u64) -> impl Strategy<Value = Option<(u64, u64)>> {
    proptest::option::weighted(p, (0..from, 50..len))
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(buyer(), 1..6),
        // Long store outages are the interesting ones: they overlap the decision, the settler
        // and the crash.
        window(0.5, 500, 1_500),
        window(0.3, 800, 600),
        proptest::option::weighted(0.35, 200u64..1_500),
    )
        .prop_map(
            |(buyers, inventory_down, payments_down, crash_at_ms)| Case {
                buyers,
                inventory_down,
                payments_down,
                crash_at_ms,
            },
        )
}

/// Payments behaviour by amount. A slow charge runs in its own task so it lands even after the
/// client gave up (as a real provider's would).
async fn payments_behaviour(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path != "/payments" {
        return unsettled(&path).unwrap_or(next.run(req).await);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 16)
        .await
        .unwrap_or_default();
    let json = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
    let amount = json["amount"].as_f64().unwrap_or(FAST);
    if let Some(id) = json["reservationId"].as_str() {
        seen()
            .lock()
            .entry(id.to_owned())
            .or_insert((amount, Instant::now()));
    }
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    if amount == UNAVAILABLE_503 {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let landed = tokio::spawn(async move {
        if amount == SLOW || amount == UNSETTLED {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        next.run(req).await
    });
    let answer = landed.await.map(IntoResponse::into_response);
    match answer {
        Ok(_) if amount == CHARGED_THEN_500 => {
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Ok(r) => r,
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// 503 for a status or refund call about an [`UNSETTLED`] charge still in its dark period.
fn unsettled(path: &str) -> Option<Response> {
    let id = path.strip_prefix("/payments/")?.trim_end_matches("/refund");
    let (amount, at) = *seen().lock().get(id)?;
    (amount == UNSETTLED && at.elapsed() < UNSETTLED_FOR)
        .then(|| axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response())
}

/// Redis and payments shared by every case.
struct World {
    redis: RedisServer,
    infra: tokio::runtime::Runtime,
    payments_url: String,
    payments_chaos: Arc<Chaos>,
    /// The audit's view of Redis (its own store, never in chaos).
    inv: Inventory,
    payments: PaymentsState,
}

impl World {
    fn start() -> Self {
        let redis = RedisServer::start();
        let infra = runtime(2);
        let url = redis.url();
        let (payments_url, payments, inv) = infra.block_on(async move {
            let state = PaymentsState::new(10_000.0, &url, StoreConfig::default()).unwrap();
            let app = router(state.clone()).layer(axum::middleware::from_fn(payments_behaviour));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            let store = Store::connect(&url, StoreConfig::default(), Chaos::new()).unwrap();
            (format!("http://{addr}"), state, Inventory::new(store))
        });
        let payments_chaos = payments.chaos.clone();
        Self {
            redis,
            infra,
            payments_url,
            payments_chaos,
            inv,
            payments,
        }
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One reservations replica on its own runtime (dropping the runtime is a crash).
struct Replica {
    rt: tokio::runtime::Runtime,
    saga: Saga,
    chaos: Arc<Chaos>,
}

impl Replica {
    fn start(world: &World, owner: &str) -> Self {
        let rt = runtime(2);
        let chaos = Chaos::new();
        let saga = rt.block_on(async {
            let store = Store::connect(
                &world.redis.url(),
                StoreConfig {
                    redis_timeout_ms: 500,
                    redis_breaker_open_ms: 100,
                    ..StoreConfig::default()
                },
                chaos.clone(),
            )
            .unwrap();
            let payments = PaymentsClient::new(PaymentsClientConfig {
                payments_url: world.payments_url.clone(),
                payments_attempt_timeout_ms: 150,
                payments_max_attempts: 2,
                payments_backoff_ms: 20,
                payments_breaker_open_ms: 100,
                payments_slot_wait_ms: 100,
                ..PaymentsClientConfig::default()
            })
            .unwrap();
            Saga {
                inv: Inventory::new(store),
                payer: Payer::new(payments),
                cfg: Arc::new(SagaConfig {
                    hold_ttl_ms: 60_000,
                    lease_ms: LEASE_MS,
                    request_deadline: Duration::from_millis(DEADLINE_MS),
                    owner: owner.to_owned(),
                }),
                metrics: SagaMetrics::register(&Metrics::new("model").unwrap()).unwrap(),
            }
        });
        Self { rt, saga, chaos }
    }

    fn crash(self) {
        self.rt.shutdown_background();
    }
}

fn email(i: usize) -> String {
    format!("b{i}@model.io")
}

fn request(i: usize, b: &Buyer) -> ReservationRequest {
    ReservationRequest {
        event_id: if b.seat.is_some() { "PM-S" } else { "PM-G" }.to_owned(),
        selection: match b.seat {
            Some(s) => Selection::Seats(vec![s.to_owned()]),
            None => Selection::Quantity(1),
        },
        user_email: email(i),
        amount: b.amount,
    }
}

type Answers = Arc<Mutex<Vec<Option<Result<Reserved, SagaError>>>>>;

/// Runs the case's requests and faults on replica A; returns the answers (None: no answer,
/// the replica crashed first).
fn run_requests(world: &World, c: &Case) -> Answers {
    let a = Replica::start(world, "replica-a");
    let answers: Answers = Arc::new(Mutex::new(vec![None; c.buyers.len()]));
    for (i, b) in c.buyers.iter().enumerate() {
        let (saga, answers, req, start) = (
            a.saga.clone(),
            answers.clone(),
            request(i, b),
            Duration::from_millis(b.start_ms),
        );
        a.rt.spawn(async move {
            tokio::time::sleep(start).await;
            let r = saga.reserve(req, None).await;
            answers.lock()[i] = Some(r);
        });
    }
    let mut timeline: Vec<(u64, Box<dyn Fn()>)> = Vec::new();
    if let Some((from, len)) = c.inventory_down {
        let (on, off) = (a.chaos.clone(), a.chaos.clone());
        timeline.push((from, Box::new(move || on.set(inventory(true)))));
        timeline.push((from + len, Box::new(move || off.set(inventory(false)))));
    }
    if let Some((from, len)) = c.payments_down {
        let (on, off) = (world.payments_chaos.clone(), world.payments_chaos.clone());
        timeline.push((from, Box::new(move || on.set(down(true)))));
        timeline.push((from + len, Box::new(move || off.set(down(false)))));
    }
    timeline.sort_by_key(|(t, _)| *t);
    let t0 = Instant::now();
    let crash_at = c.crash_at_ms.map(Duration::from_millis);
    for (t, act) in timeline {
        let at = Duration::from_millis(t);
        if crash_at.is_some_and(|c| c <= at) {
            break;
        }
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        act();
    }
    let end = crash_at.unwrap_or(Duration::from_millis(DEADLINE_MS + 600));
    std::thread::sleep(end.saturating_sub(t0.elapsed()));
    world.payments_chaos.reset();
    a.crash();
    answers
}

fn inventory(down: bool) -> ChaosSettings {
    ChaosSettings {
        inventory_down: down,
        ..ChaosSettings::default()
    }
}

fn down(down: bool) -> ChaosSettings {
    ChaosSettings {
        down,
        ..ChaosSettings::default()
    }
}

/// The buyers' reservations (one per buyer at most), read from their user indexes.
async fn reservations(
    inv: &Inventory,
    n: usize,
) -> Vec<Option<backend::reservations::model::SagaRecord>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let listed = inv.user_reservations(&email(i), 10).await.expect("list");
        assert!(listed.records.len() <= 1, "buyer {i} has two reservations");
        out.push(listed.records.into_iter().next());
    }
    out
}

/// Replica B's recovery and sweeper, running beside replica A from the start of the case (so
/// its takeovers race A's requests whenever A's leases lapse) until `stop`.
fn run_recovery(b: &Replica, stop: Arc<AtomicBool>) {
    let saga = b.saga.clone();
    b.rt.spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            recovery::run_once(&saga).await;
            sweeper::sweep_once(&saga).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Replica B recovers until every saga has ended (bounded); false if some never did.
fn recover_all(world: &World, b: &Replica, n: usize) -> bool {
    b.rt.block_on(async {
        for _ in 0..60 {
            recovery::run_once(&b.saga).await;
            sweeper::sweep_once(&b.saga).await;
            let recs = reservations(&world.inv, n).await;
            if recs
                .iter()
                .flatten()
                .all(|r| !r.view.status.is_unfinished())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    })
}

fn check(world: &World, b: &Replica, c: &Case, answers: &Answers) -> Result<(), TestCaseError> {
    prop_assert!(recover_all(world, b, c.buyers.len()), "a saga never ended");
    let inv = &world.inv;
    let (audit, recs) = world.infra.block_on(async {
        let audit = admin::audit(inv.store()).await.expect("audit");
        (audit, reservations(inv, c.buyers.len()).await)
    });
    prop_assert!(audit.ok, "audit: {:?}", audit.violations);
    let answers = answers.lock();
    if std::env::var_os("SAGA_MODEL_VERBOSE").is_some() {
        let told: Vec<String> = answers
            .iter()
            .map(|a| match a {
                None => "-".to_owned(),
                Some(Ok(_)) => "201".to_owned(),
                Some(Err(SagaError::Failed { failure, .. })) => failure.as_str().to_owned(),
                Some(Err(e)) => format!("{e:?}").chars().take(20).collect(),
            })
            .collect();
        let ended: Vec<String> = recs
            .iter()
            .map(|r| {
                r.as_ref()
                    .map_or("none".to_owned(), |r| r.view.status.to_string())
            })
            .collect();
        eprintln!(
            "case {:?} {:?} {:?}: told {told:?}, ended {ended:?}",
            c.inventory_down, c.payments_down, c.crash_at_ms
        );
    }
    for (i, rec) in recs.iter().enumerate() {
        let answer = &answers[i];
        let Some(rec) = rec else {
            // No saga created: the hold itself was refused or never ran.
            prop_assert!(
                !matches!(answer, Some(Ok(_))),
                "buyer {i}: 201 without a reservation"
            );
            continue;
        };
        let id = &rec.view.reservation_id;
        let payment = world
            .infra
            .block_on(world.payments.ledger.get(id))
            .map_err(|e| TestCaseError::fail(format!("ledger: {e}")))?;
        let confirmed = rec.view.status == ReservationStatus::Confirmed;
        let net = payment.as_ref().map_or(0.0, |p| p.net_amount);
        if confirmed {
            prop_assert!(net > 0.0, "buyer {i}: CONFIRMED without a charge");
            prop_assert_eq!(
                payment.map(|p| p.payment_id),
                rec.view.payment_id.clone(),
                "buyer {}: confirmed with another payment",
                i
            );
        } else {
            prop_assert_eq!(net, 0.0, "buyer {}: {} but charged", i, rec.view.status);
        }
        match answer {
            Some(Ok(_)) => {
                prop_assert!(confirmed, "buyer {i}: told 201, ended {}", rec.view.status)
            }
            Some(Err(SagaError::Failed { failure, .. })) => prop_assert!(
                !confirmed,
                "buyer {i}: told {}, ended CONFIRMED",
                failure.as_str()
            ),
            _ => {}
        }
    }
    Ok(())
}

fn reset(world: &World) {
    world.infra.block_on(async {
        let client = redis::Client::open(world.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        let seats = vec!["S1".to_owned(), "S2".to_owned()];
        world
            .inv
            .reset_event("PM-S", "seats", 2, &seats)
            .await
            .unwrap();
        world.inv.reset_event("PM-G", "ga", 2, &[]).await.unwrap();
    });
}

#[test]
fn random_interleavings_of_steps_crashes_and_replies_keep_the_invariants() {
    let cases = std::env::var("SAGA_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let world = World::start();
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&case(), |c| {
        reset(&world);
        let b = Replica::start(&world, "replica-b");
        let stop = Arc::new(AtomicBool::new(false));
        run_recovery(&b, stop.clone());
        let answers = run_requests(&world, &c);
        stop.store(true, Ordering::Relaxed);
        let checked = check(&world, &b, &c, &answers);
        b.crash();
        checked
    });
    eprintln!("saga model: {cases} cases in {:?}", started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
}
