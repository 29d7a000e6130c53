//! The saga lease as the request path, the settler and recovery see it: renewed while a slow
//! step runs, and with a lower bound on how long it is surely still ours. That bound is what lets
//! a request answer 504 when Redis refused the abandon mark (see `reserve::abandon`).

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{now, Saga};

/// One saga's lease held by this replica.
#[derive(Debug)]
pub struct Lease {
    res_id: String,
    /// The lease is ours at least until then (measured from when the taking or renewing command
    /// was *sent*, so Redis' expiry is never earlier).
    surely_until: Mutex<Instant>,
}

impl Lease {
    /// A lease taken by a command sent at `sent`.
    pub fn taken(res_id: &str, sent: Instant, lease_ms: u64) -> Self {
        Self {
            res_id: res_id.to_owned(),
            surely_until: Mutex::new(sent + Duration::from_millis(lease_ms)),
        }
    }

    /// The reservation.
    pub fn res_id(&self) -> &str {
        &self.res_id
    }

    /// Until when the lease is surely ours.
    pub fn surely_until(&self) -> Instant {
        *self.surely_until.lock()
    }

    fn renewed(&self, sent: Instant, lease_ms: u64) {
        let mut until = self.surely_until.lock();
        *until = (*until).max(sent + Duration::from_millis(lease_ms));
    }
}

impl Saga {
    /// Runs `fut` while renewing `lease` every third of its duration (each renewal also moves
    /// the saga's recovery score, so a long step never looks abandoned).
    pub async fn with_lease<T>(&self, lease: &Lease, fut: impl Future<Output = T>) -> T {
        let every = Duration::from_millis((self.cfg.lease_ms / 3).max(50));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return v,
                _ = tick.tick() => self.renew(lease).await,
            }
        }
    }

    /// Renews the lease once.
    pub async fn renew(&self, lease: &Lease) {
        let sent = Instant::now();
        let (now_ms, _) = now();
        let cfg = &self.cfg;
        match self
            .inv
            .renew_lease(&lease.res_id, &cfg.owner, cfg.lease_ms, now_ms)
            .await
        {
            Ok(true) => lease.renewed(sent, cfg.lease_ms),
            Ok(false) => tracing::warn!(reservation = %lease.res_id, "saga lease lost"),
            Err(e) => {
                tracing::warn!(reservation = %lease.res_id, error = %e, "lease renewal failed")
            }
        }
    }
}
