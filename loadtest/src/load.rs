//! Load generators: open-loop at a fixed rate, closed-loop workers, and "all at once".
//! Every generator is bounded in count and time.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http::{HttpError, Reply};
use crate::stats::StatusCounts;

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Sequence number given to the request factory.
    pub seq: u64,
    /// When it was sent, from the start of the run.
    pub start: Duration,
    /// Time to the full answer (or to the failure).
    pub latency: Duration,
    /// The answer, if one came.
    pub reply: Option<Reply>,
    /// The transport failure, if none came.
    pub error: Option<String>,
}

impl Sample {
    /// Status, or `None` for a transport failure.
    pub fn status(&self) -> Option<u16> {
        self.reply.as_ref().map(|r| r.status)
    }

    /// The `error` code of the body.
    pub fn code(&self) -> Option<String> {
        self.reply.as_ref().and_then(Reply::error_code)
    }

    /// `(start, status)` for charts.
    pub fn point(&self) -> (Duration, Option<u16>) {
        (self.start, self.status())
    }
}

/// Status counts of samples.
pub fn counts(samples: &[Sample]) -> StatusCounts {
    let mut c = StatusCounts::default();
    for s in samples {
        c.add(s.status());
    }
    c
}

async fn timed<Fut>(seq: u64, t0: Instant, fut: Fut) -> Sample
where
    Fut: Future<Output = Result<Reply, HttpError>>,
{
    let sent = Instant::now();
    let r = fut.await;
    let latency = sent.elapsed();
    let start = sent.duration_since(t0);
    match r {
        Ok(reply) => Sample {
            seq,
            start,
            latency,
            reply: Some(reply),
            error: None,
        },
        Err(e) => Sample {
            seq,
            start,
            latency,
            reply: None,
            error: Some(e.to_string()),
        },
    }
}

/// Sends `count` requests at once (each in its own task) and waits for all.
pub async fn all_at_once<F, Fut>(count: u64, make: F) -> Vec<Sample>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<Reply, HttpError>> + Send + 'static,
{
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..count {
        set.spawn(timed(i, t0, make(i)));
    }
    collect(set).await
}

async fn collect(mut set: tokio::task::JoinSet<Sample>) -> Vec<Sample> {
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.start);
    out
}

/// Open loop: request `i` is due at `i / rate`; at most `max_in_flight` at a time (a request
/// waits for a slot, so an overloaded target lowers the achieved rate rather than piling up).
/// Stops issuing after `duration`; waits for stragglers.
pub async fn paced<F, Fut>(
    rate_per_sec: f64,
    duration: Duration,
    max_in_flight: usize,
    make: F,
) -> Vec<Sample>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<Reply, HttpError>> + Send + 'static,
{
    paced_until(
        rate_per_sec,
        duration,
        max_in_flight,
        &AtomicBool::new(false),
        make,
    )
    .await
}

/// [`paced`], also stopping as soon as `stop` is set.
pub async fn paced_until<F, Fut>(
    rate_per_sec: f64,
    duration: Duration,
    max_in_flight: usize,
    stop: &AtomicBool,
    make: F,
) -> Vec<Sample>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<Reply, HttpError>> + Send + 'static,
{
    let rate = rate_per_sec.clamp(0.1, 1_000_000.0);
    let total = ((duration.as_secs_f64() * rate).ceil() as u64).min(10_000_000);
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        if t0.elapsed() > duration + Duration::from_secs(1) {
            break;
        }
        let fut = make(i);
        set.spawn(async move {
            let s = timed(i, t0, fut).await;
            drop(permit);
            s
        });
    }
    collect(set).await
}

/// Folds samples as they complete (long benchmarks keep summaries, not samples).
pub trait Accumulator: Send + 'static {
    /// Takes one sample into account.
    fn add(&mut self, s: &Sample);
}

/// Closed loop: `workers` tasks each send their next request as soon as the previous answered,
/// until `duration` has passed (and at most `max_requests` in total). Each worker folds its
/// samples into its own accumulator made by `new_acc`; the accumulators are returned.
pub async fn closed_loop<F, Fut, N, A>(
    workers: usize,
    duration: Duration,
    max_requests: u64,
    make: F,
    new_acc: N,
) -> Vec<A>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, HttpError>> + Send,
    N: Fn() -> A,
    A: Accumulator,
{
    let make = Arc::new(make);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let make = make.clone();
        let counter = counter.clone();
        let mut acc = new_acc();
        set.spawn(async move {
            loop {
                if Instant::now() >= end {
                    break;
                }
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                let s = timed(i, t0, make(i)).await;
                acc.add(&s);
            }
            acc
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(acc) = r {
            out.push(acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(seq: u64) -> Result<Reply, HttpError> {
        Ok(Reply {
            status: if seq.is_multiple_of(2) { 200 } else { 429 },
            latency: Duration::ZERO,
            headers: Default::default(),
            body: String::new(),
        })
    }

    #[tokio::test]
    async fn paced_sends_the_planned_count_at_the_rate() {
        let t = std::time::Instant::now();
        let s = paced(
            100.0,
            Duration::from_millis(300),
            4,
            |i| async move { ok(i) },
        )
        .await;
        assert_eq!(s.len(), 30);
        assert!(t.elapsed() >= Duration::from_millis(280));
        assert_eq!(counts(&s).get(429), 15);
        assert!(s.windows(2).all(|w| w[0].start <= w[1].start));
    }

    #[tokio::test]
    async fn closed_loop_respects_the_request_cap() {
        struct Count(u64);
        impl Accumulator for Count {
            fn add(&mut self, _s: &Sample) {
                self.0 += 1;
            }
        }
        let per_worker = closed_loop(
            4,
            Duration::from_secs(5),
            50,
            |i| async move { ok(i) },
            || Count(0),
        )
        .await;
        assert_eq!(per_worker.len(), 4);
        assert_eq!(per_worker.iter().map(|c| c.0).sum::<u64>(), 50);
    }

    #[tokio::test]
    async fn all_at_once_collects_every_answer() {
        let s = all_at_once(20, |i| async move { ok(i) }).await;
        assert_eq!(s.len(), 20);
        let mut seqs: Vec<u64> = s.iter().map(|x| x.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    }
}
