//! Recovery: at start-up and on a timer, finds sagas nobody is driving (their lease expired) and
//! drives them to CONFIRMED or compensates them. A `SET NX PX` lease per saga makes sure two
//! replicas never drive the same saga at once. The same loop seeds the demo events when Redis
//! holds none (after a Redis restart, say) and refreshes the stale-read cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::EventReader;
use super::keys;
use super::model;
use super::saga::{now, Saga};

/// Most sagas examined per pass.
const BATCH: usize = 100;
/// How often the event cache is refreshed.
const CACHE_REFRESH: Duration = Duration::from_secs(5);

/// Runs one recovery pass; returns how many sagas it took a lease on.
pub async fn run_once(saga: &Saga) -> usize {
    let (now_ms, _) = now();
    let mut cmd = redis::cmd("ZRANGEBYSCORE");
    cmd.arg(keys::SAGAS)
        .arg("-inf")
        .arg(now_ms)
        .arg("LIMIT")
        .arg(0)
        .arg(BATCH);
    let ids: Vec<String> = match saga.inv.store().query(&cmd).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::debug!(error = %e, "recovery: store unavailable");
            return 0;
        }
    };
    let mut driven = 0;
    for id in ids {
        match saga
            .inv
            .try_lease(&id, &saga.cfg.owner, saga.cfg.lease_ms)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return driven,
        }
        driven += 1;
        match model::load(saga.inv.store(), &id).await {
            Ok(Some(rec)) => saga.recover(rec).await,
            Ok(None) => {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(keys::SAGAS).arg(&id);
                let _ = saga.inv.store().query::<i64>(&cmd).await;
            }
            Err(e) => tracing::warn!(reservation = %id, error = %e, "recovery: load failed"),
        }
    }
    driven
}

/// Seeds the demo events if Redis holds no events.
pub async fn seed_if_empty(saga: &Saga) {
    match saga.inv.seed_demo().await {
        Ok(true) => tracing::info!("demo events EVT-001 and EVT-002 created"),
        Ok(false) => {}
        Err(e) => tracing::debug!(error = %e, "demo seeding deferred: store unavailable"),
    }
}

/// The maintenance loop: seeding, recovery, cache refresh, every `interval`. Runs forever.
pub async fn run(saga: Saga, events: Arc<EventReader>, interval: Duration) {
    let mut last_refresh: Option<Instant> = None;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        seed_if_empty(&saga).await;
        // Drain the backlog in bounded passes.
        for _ in 0..10 {
            if run_once(&saga).await < BATCH {
                break;
            }
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= CACHE_REFRESH) {
            events.refresh(saga.inv.store()).await;
            last_refresh = Some(Instant::now());
        }
    }
}
