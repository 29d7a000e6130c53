//! Upstream pools (SPEC §7): bulkhead, circuit breaker, server selection, active health checks
//! and passive outlier ejection.
//!
//! [`Upstreams`] is the process-lifetime registry. The proxy looks a pool up per request
//! ([`Upstreams::pool`]) and walks it in this order:
//!
//! ```text
//! pool.acquire_slot().await  → Err(Overloaded)         503 upstream_overloaded (not a failure)
//! pool.breaker()             → Err(BreakerOpen)        503 circuit_open + Retry-After
//! pool.select(&tried)        → Err(NoHealthyUpstream)  503 no_healthy_upstream
//! pool.server_guard(index)     in-flight count of the chosen server, kept in CTX
//! ... proxy to `addr` ...      connect failure → pool.recheck_soon(index), push index to
//!                              `tried`, select again
//! pool.report(index, outcome); outcome.settle(breaker_permit)
//! ```
//!
//! [`Upstreams::run_background`] runs the active checks and re-resolves names; reloads go
//! through [`Upstreams::apply`], which keeps the state of servers that remain.

mod breaker;
mod bulkhead;
mod health;
mod local;
pub mod outlier;
mod pool;
mod resolve;
mod select;
mod server;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::config::model::GatewayConfig;

pub use breaker::Outcome;
pub use bulkhead::Overloaded;
pub use health::LastCheck;
pub use local::{
    io_local_resource, is_local_resource_error, local_resource_error, local_resource_errors,
    LocalResource,
};
pub use pool::UpstreamPool;
pub use resilience::{BreakerOpen, BreakerPermit, BulkheadFull, BulkheadPermit};
pub use resolve::ResolveError;
pub use select::{NoHealthyUpstream, Selected};
pub use server::ServerInflightGuard;
pub use status::{ServerStatus, UpstreamStatus, UpstreamsStatus};

type PoolMap = HashMap<String, Arc<UpstreamPool>>;

/// Every upstream pool of the running gateway, by name. Create once, share as `Arc`.
#[derive(Debug)]
pub struct Upstreams {
    pools: ArcSwap<PoolMap>,
    /// Serialises `apply` calls.
    apply_lock: Mutex<()>,
    /// Wakes the background checker (reloads, finished checks).
    changed: Arc<Notify>,
}

impl Upstreams {
    /// An empty registry; call [`Upstreams::apply`] with the loaded config.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            pools: ArcSwap::from_pointee(HashMap::new()),
            apply_lock: Mutex::new(()),
            changed: Arc::new(Notify::new()),
        })
    }

    /// Installs the pools of `cfg` (initial load and every reload). Pools whose name remains are
    /// rebuilt from the new settings keeping the health, ejection and in-flight state of the
    /// servers that remain (same `host:port`), the breaker if its settings are unchanged and the
    /// bulkhead if its limits are unchanged; pools and servers no longer listed are dropped.
    /// Requests that already hold an `Arc<UpstreamPool>` finish on it normally.
    ///
    /// Host names new to a pool are resolved here (blocking, normally a few ms; see
    /// [`UpstreamPool`]), so call this outside the request path.
    pub fn apply(&self, cfg: &GatewayConfig) {
        let _serial = self.apply_lock.lock();
        let old = self.pools.load_full();
        let new: PoolMap = cfg
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let pool = UpstreamPool::build(
                    upstream,
                    old.get(name).map(|p| &**p),
                    Arc::clone(&self.changed),
                );
                (name.clone(), pool)
            })
            .collect();
        let removed: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
        tracing::info!(pools = new.len(), ?removed, "upstream pools applied");
        self.pools.store(Arc::new(new));
        self.changed.notify_one();
    }

    /// The current pool called `name` (an `Arc` clone; cheap enough for every request).
    pub fn pool(&self, name: &str) -> Option<Arc<UpstreamPool>> {
        self.pools.load().get(name).cloned()
    }

    /// Names of the current pools, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pools.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// A snapshot of every pool for `/status` and `/metrics`.
    pub fn status(&self) -> UpstreamsStatus {
        UpstreamsStatus {
            upstreams: self
                .pools
                .load()
                .iter()
                .map(|(name, pool)| (name.clone(), pool.status()))
                .collect(),
        }
    }

    /// Runs forever: active health checks of every current pool at its `interval` and name
    /// re-resolution before each check. Spawn it once on a tokio runtime that lives as long as
    /// the process (it spawns one short task per check on the same runtime).
    pub async fn run_background(self: Arc<Self>) {
        health::run(self).await;
    }

    pub(crate) fn snapshot(&self) -> Arc<PoolMap> {
        self.pools.load_full()
    }
}

#[cfg(test)]
mod tests;
