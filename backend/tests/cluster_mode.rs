//! The backend on a real six-node Redis Cluster (three masters, three replicas, created by the
//! test; SPEC §10.2): the standalone suite's end-to-end scenarios on one shared cluster, and a
//! master killed (`kill -9`) in the middle of a flood.

mod common;
mod reservations_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend::reservations::keys;
use redis_harness::RedisCluster;
use reqwest::StatusCode;
use serde_json::{json, Value};

use common::free_port;
use reservations_support::scenarios::{self, CRASH_FLAGS, STORM_FLAGS};
use reservations_support::{assert_no_net_charge, eventually, ga_body, Backing, Stack};

fn start_cluster() -> Arc<RedisCluster> {
    let ports = [(); 6].map(|_| free_port());
    Arc::new(RedisCluster::start(ports))
}

/// An `Idempotency-Key` whose record lives on another master than `event`'s keys.
fn key_on_another_shard(cluster: &RedisCluster, event: &str) -> String {
    let event_master = cluster.master_of(&keys::event_meta(event));
    (0..1000)
        .map(|i| format!("xshard-{i}"))
        .find(|k| cluster.master_of(&keys::idempotency(k)) != event_master)
        .expect("some key hashes to another master")
}

/// The standalone suite's scenarios, one after the other on one cluster (started once): crash
/// recovery, outbox delivery after a notifications outage, 50 concurrent requests with one
/// `Idempotency-Key` whose record is on another shard than the event, the last-seat race (1,000
/// buyers, exactly one winner) and general-admission capacity (2,000 buyers for 100 places).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reservation_scenarios_hold_on_a_redis_cluster() {
    let cluster = start_cluster();
    let flags: Vec<&str> = STORM_FLAGS.iter().chain(CRASH_FLAGS).copied().collect();
    let mut stack = Stack::start_on(Backing::Cluster(cluster.clone()), &flags);
    // The demo events were seeded through the cluster.
    stack.audit_ok("EVT-001").await;

    scenarios::killed_mid_charge_the_saga_is_finished_after_restart(&mut stack).await;
    scenarios::notifications_down_then_up_still_confirms_and_delivers_later(&mut stack).await;

    let key = key_on_another_shard(&cluster, "EVT-001");
    let stack = Arc::new(stack);
    scenarios::same_idempotency_key_fifty_times(&stack, &key).await;
    scenarios::last_seat_race_has_exactly_one_winner(&stack).await;
    scenarios::general_admission_sells_exactly_its_capacity(&stack).await;

    let audit = stack.audit().await;
    assert_eq!(audit["ok"], true, "{audit}");
}

/// One answer of the flood.
#[derive(Debug, Clone)]
struct Shot {
    event: &'static str,
    at: Duration,
    took: Duration,
    status: u16,
    code: String,
    retry_after: bool,
    reservation: Option<String>,
}

const HOT: &str = "FAILOVER-HOT";
const AMOUNT: f64 = 10.0;

/// The cold event: the first `FAILOVER-COLD-<i>` whose keys live on another master than HOT's.
fn cold_event(cluster: &RedisCluster) -> &'static str {
    let hot = cluster.master_of(&keys::event_meta(HOT));
    let name = (0..1000)
        .map(|i| format!("FAILOVER-COLD-{i}"))
        .find(|ev| cluster.master_of(&keys::event_meta(ev)) != hot)
        .expect("slot groups spread events over the masters");
    Box::leak(name.into_boxed_str())
}

/// Closed-loop buyers for both events until `stop`; every answer recorded.
async fn flood(
    stack: Arc<Stack>,
    cold: &'static str,
    t0: Instant,
    stop: Instant,
    shots: Arc<Mutex<Vec<Shot>>>,
) {
    let mut workers = Vec::new();
    for w in 0..12usize {
        let (stack, shots) = (stack.clone(), shots.clone());
        let event = if w % 3 == 0 { cold } else { HOT };
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop && i < 100_000 {
                i += 1;
                let sent = Instant::now();
                let a = stack
                    .reserve(ga_body(event, 1, &format!("w{w}-{i}@fo.test"), AMOUNT))
                    .await;
                let shot = Shot {
                    event,
                    at: sent - t0,
                    took: sent.elapsed(),
                    status: a.status.as_u16(),
                    code: a.code().to_owned(),
                    retry_after: a.headers.contains_key("retry-after"),
                    reservation: a.body["reservationId"].as_str().map(str::to_owned),
                };
                shots.lock().expect("shots").push(shot);
                if a.status == StatusCode::SERVICE_UNAVAILABLE {
                    // A client honouring Retry-After would wait; a short pause keeps the flood
                    // busy without spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// SPEC §10.2: a master killed mid-flood. Writes for its slots answer 503 with Retry-After
/// (fast once the breaker is open) until the replica takes over, then succeed again by
/// themselves; the other shard's event goes on; the old master restarted mid-flood rejoins
/// without failing a write; afterwards no oversell, no net charge on a reservation that is not
/// CONFIRMED, every saga ended, and every 201 is still CONFIRMED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_flood_fails_fast_then_recovers() {
    let cluster = start_cluster();
    let (hot, cold) = (HOT, cold_event(&cluster));
    let stack = Arc::new(Stack::start_on(
        Backing::Cluster(cluster.clone()),
        &["--saga-lease-ms", "1500", "--recovery-interval-ms", "300"],
    ));
    for ev in [hot, cold] {
        stack
            .put_event(ev, json!({"name": ev, "capacity": 1_000_000}))
            .await;
    }
    let victim = cluster.master_of(&keys::event_meta(hot));

    let shots = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let flood = tokio::spawn(flood(
        stack.clone(),
        cold,
        t0,
        t0 + Duration::from_secs(17),
        shots.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = t0.elapsed();
    cluster.nodes[victim].stop(); // SIGKILL
                                  // Reads of the failed shard's event are served from the cache meanwhile, marked stale.
    let stale = eventually(Duration::from_secs(5), || async {
        let a = stack
            .get(format!("{}/api/events/{hot}", stack.res.url()))
            .await;
        let marked = a.headers.get("x-data-stale").is_some_and(|v| v == "true");
        (a.status == StatusCode::OK && marked && a.body["stale"] == true).then_some(())
    })
    .await;
    assert!(
        stale.is_some(),
        "no stale read of {hot} while its shard was away"
    );
    // The old master comes back mid-flood and rejoins as a replica: writes must not relapse.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rejoined_at = t0.elapsed();
    cluster.nodes[victim].restart();
    flood.await.expect("flood");

    let shots = shots.lock().expect("shots").clone();
    report(&shots, killed_at);
    eprintln!("killed at {killed_at:?}, restarted at {rejoined_at:?}");
    check_answers(&shots, cold, killed_at, rejoined_at);
    check_end_state(&stack, cold, &shots).await;
}

/// (event, phase, status, error code).
type Row<'a> = (&'a str, &'static str, u16, String);

/// Prints the flood's figures per event and phase (the test's measurements).
fn report(shots: &[Shot], killed_at: Duration) {
    let mut by: HashMap<Row, (usize, Vec<Duration>)> = HashMap::new();
    for s in shots {
        let phase = if s.at < killed_at { "before" } else { "after" };
        let e = by
            .entry((s.event, phase, s.status, s.code.clone()))
            .or_default();
        e.0 += 1;
        e.1.push(s.took);
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for ((event, phase, status, code), (n, took)) in rows {
        eprintln!(
            "{event:14} {phase:6} {status} {code:22} n={n:5} median={:?}",
            median(took)
        );
    }
}

fn check_answers(shots: &[Shot], cold: &str, killed_at: Duration, rejoined_at: Duration) {
    for s in shots {
        let allowed = matches!(
            (s.status, s.code.as_str()),
            (201, _)
                | (503, "inventory_unavailable")
                | (503, "payment_unavailable")
                | (504, "payment_timeout")
        );
        assert!(allowed, "unexpected answer {s:?}");
        if s.status == 503 {
            assert!(s.retry_after, "503 without Retry-After: {s:?}");
        }
    }
    let after = |ev: &str| -> Vec<&Shot> {
        shots
            .iter()
            .filter(|s| s.event == ev && s.at > killed_at)
            .collect()
    };
    // Fail fast: once the breaker of the dead shard's groups is open, refusals take no time.
    let refused: Vec<Duration> = after(HOT)
        .into_iter()
        .filter(|s| s.status == 503)
        .map(|s| s.took)
        .collect();
    assert!(!refused.is_empty(), "no write failed on the dead shard");
    let fast = median(refused);
    assert!(fast < Duration::from_millis(50), "median 503 took {fast:?}");
    // Recovery by itself: writes on the failed shard succeed again after the promotion.
    let recovered = after(HOT)
        .into_iter()
        .filter(|s| s.status == 201)
        .map(|s| s.at)
        .max()
        .expect("no write succeeded on the failed shard after the failover");
    assert!(recovered > killed_at + Duration::from_secs(2));
    // The old master rejoining as a replica costs no write (a short grace for requests in
    // flight at the restart).
    let relapsed: Vec<&Shot> = after(HOT)
        .into_iter()
        .filter(|s| s.at > rejoined_at + Duration::from_millis(500) && s.status != 201)
        .collect();
    assert!(
        relapsed.is_empty(),
        "{} writes failed while the old master rejoined, e.g. {:?}",
        relapsed.len(),
        relapsed.first()
    );
    // The other shard goes on.
    let cold = after(cold);
    let ok = cold.iter().filter(|s| s.status == 201).count();
    assert!(
        ok * 10 >= cold.len() * 9,
        "the other shard's event suffered: {ok} of {} succeeded",
        cold.len()
    );
}

/// After the flood: every saga ends, the audit holds, no reservation that is not CONFIRMED keeps
/// a charge, every 201 is still CONFIRMED (nothing acknowledged was lost), and the net amount
/// charged equals the sales.
async fn check_end_state(stack: &Arc<Stack>, cold: &str, shots: &[Shot]) {
    // `field` of the audit added up over the two events (None if one is missing).
    let total = |audit: &Value, field: &str| -> Option<i64> {
        let evs = audit["events"].as_array()?;
        evs.iter()
            .filter(|e| e["eventId"] == HOT || e["eventId"] == cold)
            .map(|e| e[field].as_i64())
            .sum()
    };
    let ended = eventually(Duration::from_secs(40), || async {
        let audit = stack.audit().await;
        (total(&audit, "held") == Some(0) && audit["ok"] == true).then_some(audit)
    })
    .await;
    let audit = ended.expect("sagas left unfinished (held > 0) or the audit failed");
    let sold = total(&audit, "sold").expect("both events audited");
    let created: Vec<&str> = shots
        .iter()
        .filter(|s| s.status == 201)
        .filter_map(|s| s.reservation.as_deref())
        .collect();
    let mut lost = 0;
    for id in &created {
        if stack.reservation(id).await["status"] != "CONFIRMED" {
            lost += 1;
        }
    }
    eprintln!(
        "201s: {}, still CONFIRMED: {}, sold: {sold}",
        created.len(),
        created.len() - lost
    );
    assert_eq!(lost, 0, "acknowledged sales lost in the failover");
    for s in shots.iter().filter(|s| s.status != 201) {
        if let Some(id) = &s.reservation {
            if stack.reservation(id).await["status"] != "CONFIRMED" {
                assert_no_net_charge(stack, id).await;
            }
        }
    }
    let summary: Value = stack
        .get(format!("{}/admin/payments/summary", stack.payments.url()))
        .await
        .body;
    let net = summary["netAmount"].as_f64().unwrap_or(-1.0);
    assert!(
        (net - sold as f64 * AMOUNT).abs() < 0.01,
        "net charged {net} != sold {sold} × {AMOUNT}: {summary}"
    );
}
