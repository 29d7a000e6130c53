//! Gap 3 of issue 10: recovery must find an abandoned saga however many long-running sagas
//! (settles, slow charges) a live replica is driving at the same time.
//!
//! Before the fix: recovery read only the first 100 overdue sagas, skipped the leased ones, and a
//! lease renewal did not move a saga's score, so 150 live settles kept the abandoned saga behind
//! them for as long as they ran.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backend::chaos::Chaos;
use backend::payments_client::{PaymentsClient, PaymentsClientConfig};
use backend::reservations::inventory::{HoldOutcome, HoldRequest, HoldTiming, Inventory};
use backend::reservations::model::ReservationStatus;
use backend::reservations::payer::Payer;
use backend::reservations::recovery;
use backend::reservations::saga::{now, Saga, SagaConfig, SagaMetrics};
use backend::store::{Store, StoreConfig};
use backend::telemetry::Metrics;
use common::{res_id, BackendProcess, RedisServer};

const LIVE: usize = 150;

async fn pending(inv: &Inventory, res_id: &str, owner: &str, lease_ms: u64) {
    let (ms, iso) = now();
    let held = inv
        .hold(
            &HoldRequest {
                res_id,
                event_id: "EVT-002",
                seats: &[],
                quantity: 1,
                amount: 10.0,
                user_email: "scan@x.io",
                idempotency: None,
            },
            &HoldTiming {
                now_ms: ms,
                now_iso: &iso,
                hold_ttl_ms: 60_000,
                lease_ms,
                owner,
                pay_within_ms: Some(60_000),
                not_after_ms: None,
                stale_claim_ms: 20_000,
            },
        )
        .await
        .expect("hold");
    assert_eq!(held, HoldOutcome::Held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap3_recovery_finds_an_abandoned_saga_behind_many_long_settles() {
    let redis = RedisServer::start();
    let payments = BackendProcess::start("payments", &[], &[("REDIS_URL", &redis.url())]);
    let store = Store::connect(&redis.url(), StoreConfig::default(), Chaos::new()).expect("store");
    let inv = Inventory::new(store);
    inv.seed_demo().await.expect("seed");

    // A live replica drives 150 long sagas and keeps renewing their leases.
    let lease_ms = 1_000;
    for i in 0..LIVE {
        pending(
            &inv,
            &res_id(&format!("live-{i:03}"), "EVT-002"),
            "live-replica",
            lease_ms,
        )
        .await;
    }
    let renewer = {
        let inv = inv.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                for i in 0..LIVE {
                    let (now_ms, _) = now();
                    let _ = inv
                        .renew_lease(&format!("live-{i:03}"), "live-replica", lease_ms, now_ms)
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // A saga whose replica died: its lease expires and nobody renews it.
    let abandoned = res_id("abandoned", "EVT-002");
    pending(&inv, &abandoned, "dead-replica", 300).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let metrics = Metrics::new("test").expect("metrics");
    let saga = Saga {
        inv: inv.clone(),
        payer: Payer::new(
            PaymentsClient::new(PaymentsClientConfig {
                payments_url: payments.url(),
                ..PaymentsClientConfig::default()
            })
            .expect("client"),
        ),
        cfg: Arc::new(SagaConfig {
            hold_ttl_ms: 60_000,
            lease_ms,
            request_deadline: Duration::from_secs(5),
            owner: "recovering-replica".into(),
        }),
        metrics: SagaMetrics::register(&metrics).expect("saga metrics"),
    };
    let mut finished = false;
    for _ in 0..20 {
        recovery::run_once(&saga).await;
        let rec = inv.load(&abandoned).await.expect("load").expect("exists");
        if rec.view.status == ReservationStatus::Failed {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    renewer.abort();
    assert!(finished, "recovery never reached the abandoned saga");
}
