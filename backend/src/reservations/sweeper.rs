//! The hold sweeper: returns holds past their deadline to stock. Deadlines live in each seat's
//! state and in a sorted set per slot group; the sweeper scans only the due part of that set (never keyspace
//! notifications, which are fire-and-forget).

use std::time::Duration;

use super::keys;
use super::saga::{now, Saga};
use crate::slots::{Group, GROUPS};

/// Most holds expired per page.
const BATCH: usize = 200;
/// Pages per pass.
const MAX_PAGES: usize = 10;

/// Expires every due hold of every slot group (bounded passes); returns how many were expired.
pub async fn sweep_once(saga: &Saga) -> usize {
    let groups = (0..GROUPS).map(|g| sweep_group(saga, g));
    futures::future::join_all(groups).await.into_iter().sum()
}

/// [`sweep_once`] for one group's holds index. A group whose shard is down ends its pass at
/// once; the others go on.
async fn sweep_group(saga: &Saga, g: Group) -> usize {
    let mut expired = 0;
    for _ in 0..MAX_PAGES {
        let (now_ms, _) = now();
        let Ok(due) = saga.inv.due_holds(g, now_ms, BATCH).await else {
            return expired;
        };
        let n = due.len();
        for member in due {
            match keys::split_hold_member(&member) {
                Some((event_id, res_id)) => {
                    if saga.expire_hold(res_id, event_id).await {
                        expired += 1;
                    }
                }
                None => {
                    if let Err(e) = saga.inv.forget_hold_member(g, &member).await {
                        tracing::warn!(%member, error = %e, "malformed hold entry not removed");
                    }
                }
            }
        }
        if n < BATCH {
            break;
        }
    }
    expired
}

/// Sweeps every `interval`, forever.
pub async fn run(saga: Saga, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let n = sweep_once(&saga).await;
        if n > 0 {
            tracing::info!(expired = n, "holds returned to stock");
        }
    }
}
