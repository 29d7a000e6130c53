//! A time-windowed circuit breaker with a single half-open probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Number of buckets the sliding window is cut into.
const BUCKETS: u32 = 10;

/// Breaker thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failure ratio in (0, 1] that opens the breaker.
    pub failure_rate: f64,
    /// Minimum calls recorded in the window before the ratio is judged.
    pub min_requests: u32,
    /// Sliding window length.
    pub window: Duration,
    /// How long the breaker stays open before letting one probe through.
    pub open_for: Duration,
    /// Also open after this many failures in a row, whatever the window's ratio (0 = off). A
    /// dependency that just died after a busy, healthy period would otherwise have to fail as
    /// many calls as had succeeded in the window before the ratio trips.
    pub consecutive_failures: u32,
}

/// The breaker's externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One probe call is (or may be) in flight; others are refused.
    HalfOpen,
}

impl BreakerState {
    /// The SPEC's gauge encoding: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// Lower-case name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Returned when the breaker refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open, retry after {retry_after:?}")]
pub struct BreakerOpen {
    /// Time until the breaker lets a probe through (at least 1 ms, at most `open_for`).
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Index of the window slice this bucket currently holds.
    epoch: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    buckets: [Bucket; BUCKETS as usize],
    /// Failures since the last success (closed state only).
    failure_streak: u32,
}

/// A thread-safe circuit breaker. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    origin: Instant,
    bucket_len: Duration,
    inner: Mutex<Inner>,
}

/// Permission to make one call. Report its outcome with [`BreakerPermit::success`] or
/// [`BreakerPermit::failure`]; dropping it unreported (or [`BreakerPermit::ignore`]) records
/// nothing, and in half-open frees the probe slot for the next caller.
#[derive(Debug)]
#[must_use = "report the call's outcome, or drop the permit to ignore it"]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    /// Creates a closed breaker.
    pub fn new(config: BreakerConfig) -> Arc<Self> {
        let window = config.window.max(Duration::from_millis(BUCKETS as u64));
        Arc::new(Self {
            bucket_len: window / BUCKETS,
            config,
            origin: Instant::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                buckets: [Bucket::default(); BUCKETS as usize],
                failure_streak: 0,
            }),
        })
    }

    /// The thresholds this breaker was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Asks to make a call now.
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, BreakerOpen> {
        self.try_acquire_at(Instant::now())
    }

    /// Asks to make a call at `now` (deterministic tests).
    pub fn try_acquire_at(self: &Arc<Self>, now: Instant) -> Result<BreakerPermit, BreakerOpen> {
        let mut inner = self.inner.lock();
        match inner.phase {
            Phase::Closed => Ok(self.permit(false)),
            Phase::Open { until } if now < until => Err(BreakerOpen {
                retry_after: (until - now).max(Duration::from_millis(1)),
            }),
            Phase::Open { .. } => {
                inner.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                };
                Ok(self.permit(true))
            }
            Phase::HalfOpen {
                ref mut probe_in_flight,
            } => {
                if *probe_in_flight {
                    // The probe decides; until then callers wait a short while.
                    Err(BreakerOpen {
                        retry_after: Duration::from_secs(1).min(self.config.open_for),
                    })
                } else {
                    *probe_in_flight = true;
                    Ok(self.permit(true))
                }
            }
        }
    }

    /// Current state (an open breaker whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    /// State at `now`.
    pub fn state_at(&self, now: Instant) -> BreakerState {
        match self.inner.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Calls and failures currently inside the window (for status pages).
    pub fn window_counts(&self) -> (u32, u32) {
        let now = Instant::now();
        let inner = self.inner.lock();
        let epoch = self.epoch(now);
        Self::sum(&inner.buckets, epoch)
    }

    fn permit(self: &Arc<Self>, probe: bool) -> BreakerPermit {
        BreakerPermit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        (nanos / self.bucket_len.as_nanos().max(1)) as u64
    }

    fn sum(buckets: &[Bucket], epoch: u64) -> (u32, u32) {
        buckets
            .iter()
            .filter(|b| b.epoch + (BUCKETS as u64) > epoch && b.epoch <= epoch)
            .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
    }

    fn record(&self, probe: bool, failed: bool, now: Instant) {
        let mut inner = self.inner.lock();
        if probe {
            if let Phase::HalfOpen { .. } = inner.phase {
                if failed {
                    inner.phase = Phase::Open {
                        until: now + self.config.open_for,
                    };
                } else {
                    inner.phase = Phase::Closed;
                    inner.buckets = [Bucket::default(); BUCKETS as usize];
                    inner.failure_streak = 0;
                }
            }
            return;
        }
        if !matches!(inner.phase, Phase::Closed) {
            // A call admitted while closed that finishes after the breaker opened: already judged.
            return;
        }
        let epoch = self.epoch(now);
        let bucket = &mut inner.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls += 1;
        if failed {
            bucket.failures += 1;
            inner.failure_streak = inner.failure_streak.saturating_add(1);
        } else {
            inner.failure_streak = 0;
        }
        let (calls, failures) = Self::sum(&inner.buckets, epoch);
        let streak_trips = self.config.consecutive_failures > 0
            && inner.failure_streak >= self.config.consecutive_failures;
        let ratio_trips = calls >= self.config.min_requests.max(1)
            && f64::from(failures) >= self.config.failure_rate * f64::from(calls);
        if failed && (streak_trips || ratio_trips) {
            inner.failure_streak = 0;
            inner.phase = Phase::Open {
                until: now + self.config.open_for,
            };
            inner.buckets = [Bucket::default(); BUCKETS as usize];
        }
    }

    fn release_probe(&self) {
        let mut inner = self.inner.lock();
        if let Phase::HalfOpen {
            ref mut probe_in_flight,
        } = inner.phase
        {
            *probe_in_flight = false;
        }
    }
}

impl BreakerPermit {
    /// The call succeeded.
    pub fn success(self) {
        self.success_at(Instant::now())
    }

    /// The call failed (counts toward opening).
    pub fn failure(self) {
        self.failure_at(Instant::now())
    }

    /// The call's outcome says nothing about the dependency's health (e.g. shed on purpose).
    pub fn ignore(self) {}

    /// Whether this permit is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Success at `now` (deterministic tests).
    pub fn success_at(mut self, now: Instant) {
        self.settled = true;
        self.breaker.record(self.probe, false, now);
    }

    /// Failure at `now` (deterministic tests).
    pub fn failure_at(mut self, now: Instant) {
        self.settled = true;
        self.breaker.record(self.probe, true, now);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<CircuitBreaker> {
        CircuitBreaker::new(BreakerConfig {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(15),
            consecutive_failures: 0,
        })
    }

    #[test]
    fn stays_closed_below_min_requests() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.try_acquire_at(t).unwrap().failure_at(t);
        }
        assert_eq!(b.state_at(t), BreakerState::Closed);
    }

    #[test]
    fn opens_at_rate_then_half_open_probe_closes() {
        let b = breaker();
        let t = Instant::now();
        b.try_acquire_at(t).unwrap().success_at(t);
        b.try_acquire_at(t).unwrap().success_at(t);
        b.try_acquire_at(t).unwrap().failure_at(t);
        assert_eq!(b.state_at(t), BreakerState::Closed);
        b.try_acquire_at(t).unwrap().failure_at(t); // 2 of 4 = 50 %
        assert_eq!(b.state_at(t), BreakerState::Open);
        let err = b.try_acquire_at(t + Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(10));

        let later = t + Duration::from_secs(15);
        assert_eq!(b.state_at(later), BreakerState::HalfOpen);
        let probe = b.try_acquire_at(later).unwrap();
        assert!(probe.is_probe());
        assert!(b.try_acquire_at(later).is_err(), "only one probe at a time");
        probe.success_at(later);
        assert_eq!(b.state_at(later), BreakerState::Closed);
        assert!(b.try_acquire_at(later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_and_dropped_probe_frees_slot() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            b.try_acquire_at(t).unwrap().failure_at(t);
        }
        let later = t + Duration::from_secs(16);
        drop(b.try_acquire_at(later).unwrap());
        let probe = b.try_acquire_at(later).unwrap();
        probe.failure_at(later);
        assert_eq!(b.state_at(later), BreakerState::Open);
        assert!(b.try_acquire_at(later + Duration::from_secs(14)).is_err());
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.try_acquire_at(t).unwrap().failure_at(t);
        }
        let later = t + Duration::from_secs(11);
        b.try_acquire_at(later).unwrap().failure_at(later);
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn a_failure_streak_opens_despite_earlier_successes() {
        let b = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 3,
            ..breaker().config().clone()
        });
        let t = Instant::now();
        for _ in 0..20 {
            b.try_acquire_at(t).unwrap().success_at(t);
        }
        b.try_acquire_at(t).unwrap().failure_at(t);
        b.try_acquire_at(t).unwrap().failure_at(t);
        assert_eq!(
            b.state_at(t),
            BreakerState::Closed,
            "2 of 22 is below the ratio"
        );
        b.try_acquire_at(t).unwrap().failure_at(t);
        assert_eq!(b.state_at(t), BreakerState::Open, "3 in a row trip it");
    }

    #[test]
    fn a_success_ends_the_streak() {
        let b = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 3,
            min_requests: 100,
            ..breaker().config().clone()
        });
        let t = Instant::now();
        for _ in 0..5 {
            b.try_acquire_at(t).unwrap().failure_at(t);
            b.try_acquire_at(t).unwrap().failure_at(t);
            b.try_acquire_at(t).unwrap().success_at(t);
        }
        assert_eq!(b.state_at(t), BreakerState::Closed);
    }

    #[test]
    fn ignored_outcomes_do_not_count() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..10 {
            b.try_acquire_at(t).unwrap().ignore();
        }
        assert_eq!(b.window_counts(), (0, 0));
    }

    #[test]
    fn concurrent_failures_open_exactly_once() {
        let b = breaker();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let b = Arc::clone(&b);
                s.spawn(move || {
                    for _ in 0..100 {
                        if let Ok(p) = b.try_acquire() {
                            p.failure();
                        }
                    }
                });
            }
        });
        assert_eq!(b.state(), BreakerState::Open);
    }
}
