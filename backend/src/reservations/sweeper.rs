//! The hold sweeper: returns holds past their deadline to stock. Deadlines live in each seat's
//! state and in a sorted set; the sweeper scans only the due part of that set (never keyspace
//! notifications, which are fire-and-forget).

use std::time::Duration;

use super::keys;
use super::saga::{now, Saga};

/// Most holds expired per pass.
const BATCH: usize = 200;

/// Expires every due hold (bounded passes); returns how many were expired.
pub async fn sweep_once(saga: &Saga) -> usize {
    let mut expired = 0;
    for _ in 0..10 {
        let (now_ms, _) = now();
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(keys::HOLDS)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(BATCH);
        let due: Vec<String> = match saga.inv.store().query(&cmd).await {
            Ok(d) => d,
            Err(_) => return expired,
        };
        let n = due.len();
        for member in due {
            let Some((event_id, res_id)) = keys::split_hold_member(&member) else {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(keys::HOLDS).arg(&member);
                let _ = saga.inv.store().query::<i64>(&cmd).await;
                continue;
            };
            if saga.expire_hold(res_id, event_id).await {
                expired += 1;
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
