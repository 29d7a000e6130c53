//! Glue between a pool and the workspace's [`resilience::Bulkhead`].

use resilience::{BulkheadConfig, BulkheadFull};

use crate::config::model::Upstream;

/// The pool's bulkhead refused the request: `max_inflight` busy and the queue full, or the wait
/// exceeded `queue_timeout`. Answer 503 `upstream_overloaded` with `Retry-After: 1`; this is
/// never an upstream failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream overloaded: {reason}")]
pub struct Overloaded {
    /// Whether the queue was full or the wait timed out.
    pub reason: BulkheadFull,
}

/// The bulkhead limits of an upstream.
pub(crate) fn bulkhead_config(upstream: &Upstream) -> BulkheadConfig {
    BulkheadConfig {
        max_concurrent: upstream.max_inflight,
        max_queue: Some(upstream.queue),
        queue_timeout: upstream.queue_timeout,
    }
}
