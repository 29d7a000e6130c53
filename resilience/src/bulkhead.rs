//! A bulkhead: bounded concurrency with a bounded, time-limited wait queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bulkhead limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Calls allowed at once.
    pub max_concurrent: usize,
    /// Calls allowed to wait for a slot; `None` means no bound on waiters (only on wait time).
    pub max_queue: Option<usize>,
    /// Longest wait for a slot; zero means never wait.
    pub queue_timeout: Duration,
}

/// The bulkhead refused a call: no slot, and the queue was full or the wait timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadFull {
    /// All slots busy and the queue was full (or there is no queue).
    #[error("bulkhead full")]
    Rejected,
    /// Waited `queue_timeout` without getting a slot.
    #[error("bulkhead wait timed out")]
    TimedOut,
}

/// A concurrency limiter. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Bulkhead {
    config: BulkheadConfig,
    slots: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    waiting: AtomicUsize,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Bulkhead {
    /// Creates a bulkhead; `max_concurrent` of 0 is treated as 1.
    pub fn new(config: BulkheadConfig) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            in_flight: Arc::new(AtomicUsize::new(0)),
            waiting: AtomicUsize::new(0),
        })
    }

    /// The limits this bulkhead was built with.
    pub fn config(&self) -> &BulkheadConfig {
        &self.config
    }

    /// Calls currently holding a slot.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls currently waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a slot at once if one is free (never waits).
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => Ok(self.wrap(p)),
            Err(_) => Err(BulkheadFull::Rejected),
        }
    }

    /// Takes a slot, waiting in the queue if allowed.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        if let Ok(p) = self.try_acquire() {
            return Ok(p);
        }
        if self.config.queue_timeout.is_zero() {
            return Err(BulkheadFull::Rejected);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        let _guard = WaitGuard(&self.waiting);
        if let Some(max) = self.config.max_queue {
            if queued > max {
                return Err(BulkheadFull::Rejected);
            }
        }
        match tokio::time::timeout(
            self.config.queue_timeout,
            Arc::clone(&self.slots).acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => Ok(self.wrap(p)),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(BulkheadFull::TimedOut),
        }
    }

    fn wrap(&self, permit: OwnedSemaphorePermit) -> BulkheadPermit {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        BulkheadPermit {
            _permit: permit,
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkhead(max: usize, queue: Option<usize>, wait_ms: u64) -> Arc<Bulkhead> {
        Bulkhead::new(BulkheadConfig {
            max_concurrent: max,
            max_queue: queue,
            queue_timeout: Duration::from_millis(wait_ms),
        })
    }

    #[tokio::test]
    async fn rejects_beyond_capacity_without_queue() {
        let b = bulkhead(2, Some(0), 0);
        let p1 = b.acquire().await.unwrap();
        let _p2 = b.acquire().await.unwrap();
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.acquire().await.unwrap_err(), BulkheadFull::Rejected);
        drop(p1);
        assert_eq!(b.in_flight(), 1);
        assert!(b.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn queued_call_gets_freed_slot() {
        let b = bulkhead(1, Some(1), 1000);
        let p = b.acquire().await.unwrap();
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move { b2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.waiting(), 1);
        // The queue holds one; a second waiter is refused at once.
        assert_eq!(b.acquire().await.unwrap_err(), BulkheadFull::Rejected);
        drop(p);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn wait_times_out() {
        let b = bulkhead(1, None, 50);
        let _p = b.acquire().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(b.acquire().await.unwrap_err(), BulkheadFull::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_exceeds_capacity_under_concurrency() {
        let b = bulkhead(10, None, 5000);
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let b = Arc::clone(&b);
                let peak = Arc::clone(&peak);
                tokio::spawn(async move {
                    let _p = b.acquire().await.unwrap();
                    peak.fetch_max(b.in_flight(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 10);
        assert_eq!(b.in_flight(), 0);
    }
}
