//! Recovery: at start-up and on a timer, finds sagas nobody is driving and drives them to
//! CONFIRMED or compensates them. A saga's score in the index is when its lease runs out (every
//! renewal moves it), so the due part of the index is exactly the abandoned sagas; recovery
//! claims each due saga (`claim.lua`: take the lease if free, and in any case move the score to
//! the lease's end), so one pass pages through every due saga however many others are leased.
//! The same loop seeds the demo events when Redis holds none (after a Redis restart, say) and
//! refreshes the stale-read cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::events::EventReader;
use super::inventory::Claim;
use super::saga::{now, Saga};
use crate::slots::{Group, GROUPS};

/// Sagas read per page of the due index.
pub const PAGE: usize = 100;
/// Pages per pass: a pass looks at most at `PAGE × MAX_PAGES` sagas.
const MAX_PAGES: usize = 50;
/// Claimed sagas driven at once (each may wait on payments).
const DRIVE_CONCURRENCY: usize = 16;
/// How often the event cache is refreshed.
const CACHE_REFRESH: Duration = Duration::from_secs(5);

/// Runs one recovery pass over every slot group; returns how many sagas it claimed and drove.
pub async fn run_once(saga: &Saga) -> usize {
    let groups = (0..GROUPS).map(|g| run_group(saga, g));
    futures::future::join_all(groups).await.into_iter().sum()
}

/// [`run_once`] for one group's saga index. A group whose shard is down ends its pass at once;
/// the others go on.
async fn run_group(saga: &Saga, g: Group) -> usize {
    let mut driven = 0;
    for _ in 0..MAX_PAGES {
        let (now_ms, _) = now();
        let ids = match saga.inv.due_sagas(g, now_ms, PAGE).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(group = g, error = %e, "recovery: store unavailable");
                return driven;
            }
        };
        let Some(claimed) = claim_all(saga, &ids, now_ms).await else {
            return driven;
        };
        driven += claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(DRIVE_CONCURRENCY, |id| drive(saga, id))
            .await;
        if ids.len() < PAGE {
            break;
        }
    }
    driven
}

/// Claims each due saga; `None` if the store failed (the pass ends).
async fn claim_all(saga: &Saga, ids: &[String], now_ms: i64) -> Option<Vec<String>> {
    let cfg = &saga.cfg;
    let mut claimed = Vec::new();
    for id in ids {
        match saga.inv.claim(id, &cfg.owner, cfg.lease_ms, now_ms).await {
            Ok(Claim::Claimed) => claimed.push(id.clone()),
            Ok(Claim::Busy | Claim::Gone) => {}
            Err(e) => {
                tracing::warn!(reservation = %id, error = %e, "recovery: claim failed");
                return None;
            }
        }
    }
    Some(claimed)
}

async fn drive(saga: &Saga, id: String) {
    match saga.inv.load(&id).await {
        Ok(Some(rec)) => saga.recover(rec).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(reservation = %id, error = %e, "recovery: load failed"),
    }
}

/// Seeds the demo events if Redis holds no events.
pub async fn seed_if_empty(saga: &Saga) {
    match saga.inv.seed_demo().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(created = n, "demo events EVT-001 and EVT-002 seeded"),
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
        run_once(&saga).await;
        if last_refresh.is_none_or(|t| t.elapsed() >= CACHE_REFRESH) {
            events.refresh(saga.inv.store()).await;
            last_refresh = Some(Instant::now());
        }
    }
}
