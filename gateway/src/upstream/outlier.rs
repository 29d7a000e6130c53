//! Passive outlier ejection (SPEC §7 "Health ejection").
//!
//! `consecutive_failures` failed requests in a row (connect failures, timeouts, failure statuses)
//! eject a server for `base_ejection × times_ejected`. At most `max_ejection_percent` of a pool is
//! ejected at once, rounded down but at least one server, and never the last un-ejected server.
//! An ejected server comes back by itself when its time is up, with its failure counter at zero.
//!
//! Two choices the SPEC leaves open, made here like Envoy's outlier detection does:
//! - `times_ejected` decays: each `base_ejection` spent un-ejected since the last ejection ended
//!   takes one off the multiplier, so a server that failed once last week is not ejected for an
//!   hour today. A server failing again right after coming back gets `2 × base`, then `3 × base`...
//! - One ejection never lasts more than [`MAX_EJECTION`] (or `base_ejection` if that is longer).
//!
//! Failures reported while a server is ejected (requests that were already in flight) are ignored,
//! so a server that comes back starts from a clean counter.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bound of one ejection, unless `base_ejection` itself is longer.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Ejection bookkeeping of one server. Timestamps are milliseconds since the server's origin.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    /// Failures in a row since the last success or ejection.
    consecutive: AtomicU32,
    /// When the current (or last) ejection ends; 0 = never ejected.
    ejected_until_ms: AtomicU64,
    /// The multiplier of `base_ejection` used by the last ejection (after decay).
    times_ejected: AtomicU32,
    /// Ejections since the server was added (monotonic, for metrics).
    ejections_total: AtomicU64,
}

impl OutlierState {
    /// Whether the server is ejected at `now_ms`.
    pub(crate) fn is_ejected_at(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds of ejection left at `now_ms` (0 when not ejected).
    pub(crate) fn ejected_for_ms(&self, now_ms: u64) -> u64 {
        self.ejected_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    /// Failures in a row.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// The multiplier used by the last ejection.
    pub(crate) fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// Ejections so far (monotonic).
    pub(crate) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// A successful request: the failure run ends.
    pub(crate) fn record_success(&self) {
        // Read first so that the common case (already zero) writes nothing to a shared line.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A failed request at `now_ms`. Returns true when the run reached `threshold` and the
    /// server should be ejected (the caller decides under the pool's ejection lock).
    pub(crate) fn record_failure(&self, now_ms: u64, threshold: u32) -> bool {
        if threshold == 0 || self.is_ejected_at(now_ms) {
            return false;
        }
        let run = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        run >= threshold
    }

    /// Whether a failure run of at least `threshold` is pending (re-checked under the lock).
    pub(crate) fn wants_ejection(&self, now_ms: u64, threshold: u32) -> bool {
        threshold > 0 && !self.is_ejected_at(now_ms) && self.consecutive_failures() >= threshold
    }

    /// Ejects the server at `now_ms`; call under the pool's ejection lock. Returns the duration.
    pub(crate) fn eject(&self, now_ms: u64, base: Duration) -> Duration {
        let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
        let last_end = self.ejected_until_ms.load(Ordering::Relaxed);
        let clean_ms = now_ms.saturating_sub(last_end);
        let decay = u32::try_from(clean_ms / base_ms).unwrap_or(u32::MAX);
        let times = self
            .times_ejected
            .load(Ordering::Relaxed)
            .saturating_sub(decay)
            .saturating_add(1);
        let duration = ejection_duration(base, times);
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.times_ejected.store(times, Ordering::Relaxed);
        self.ejected_until_ms
            .store(now_ms.saturating_add(duration_ms), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        duration
    }
}

/// `base × times`, capped at `max(MAX_EJECTION, base)`.
pub(crate) fn ejection_duration(base: Duration, times: u32) -> Duration {
    base.saturating_mul(times.max(1))
        .min(MAX_EJECTION.max(base))
}

/// How many of `pool_size` servers may be ejected at once: `max_ejection_percent` of the pool,
/// rounded down but at least one, and never all of them (one server always stays). A percent of
/// zero disables ejection.
pub(crate) fn max_ejectable(pool_size: usize, max_ejection_percent: u32) -> usize {
    if max_ejection_percent == 0 || pool_size <= 1 {
        return 0;
    }
    let pct = usize::try_from(max_ejection_percent.min(100)).unwrap_or(100);
    (pool_size.saturating_mul(pct) / 100)
        .max(1)
        .min(pool_size - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_percent_at_least_one_never_all() {
        assert_eq!(max_ejectable(1, 50), 0);
        assert_eq!(max_ejectable(2, 50), 1);
        assert_eq!(max_ejectable(3, 50), 1);
        assert_eq!(max_ejectable(4, 50), 2);
        assert_eq!(max_ejectable(10, 10), 1);
        assert_eq!(max_ejectable(10, 5), 1);
        assert_eq!(max_ejectable(3, 100), 2);
        assert_eq!(max_ejectable(5, 0), 0);
    }

    #[test]
    fn threshold_run_then_eject_resets_counter() {
        let o = OutlierState::default();
        assert!(!o.record_failure(0, 3));
        assert!(!o.record_failure(0, 3));
        o.record_success();
        assert!(!o.record_failure(0, 3));
        assert!(!o.record_failure(0, 3));
        assert!(o.record_failure(0, 3));
        assert_eq!(o.eject(0, Duration::from_secs(10)), Duration::from_secs(10));
        assert_eq!(o.consecutive_failures(), 0);
        assert!(o.is_ejected_at(9_999));
        assert!(!o.is_ejected_at(10_000));
        // Failures while ejected are ignored.
        assert!(!o.record_failure(5_000, 1));
        assert_eq!(o.consecutive_failures(), 0);
    }

    #[test]
    fn ejection_grows_then_decays() {
        let o = OutlierState::default();
        let base = Duration::from_secs(10);
        assert_eq!(o.eject(1_000, base), base);
        // Fails again right after coming back at 11 s: twice as long.
        assert_eq!(o.eject(11_000, base), 2 * base);
        // Back at 31 s; fails at 32 s: three times.
        assert_eq!(o.eject(32_000, base), 3 * base);
        // Back at 62 s; clean for 25 s (two bases): 3 - 2 + 1 = 2.
        assert_eq!(o.eject(87_000, base), 2 * base);
        assert_eq!(o.ejections_total(), 4);
    }

    #[test]
    fn ejection_is_capped() {
        assert_eq!(
            ejection_duration(Duration::from_secs(10), 1000),
            MAX_EJECTION
        );
        assert_eq!(
            ejection_duration(Duration::from_secs(600), 3),
            Duration::from_secs(600)
        );
    }
}
