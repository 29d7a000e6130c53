//! Benchmarks: `POST /api/reservations` straight at one reservations process, and a GET flood at
//! any URL (to compare the gateway with nginx).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::http::{self, HttpError};
use crate::load::{self, Accumulator, Sample};
use crate::stack::{ga_request, EventSpec, EventView, Stack};
use crate::stats::{Latencies, LatencySummary, StatusCounts};

/// Per-worker tally.
#[derive(Debug, Default)]
pub struct Tally {
    /// All latencies.
    pub all: Latencies,
    /// Latencies of 2xx answers.
    pub ok: Latencies,
    /// Status counts.
    pub counts: StatusCounts,
    /// First few unexpected answers.
    pub examples: Vec<String>,
}

impl Accumulator for Tally {
    fn add(&mut self, s: &Sample) {
        self.all.record(s.latency);
        self.counts.add(s.status());
        match &s.reply {
            Some(r) if r.is_success() => self.ok.record(s.latency),
            Some(r) => {
                if self.examples.len() < 3 {
                    self.examples
                        .push(format!("{} {}", r.status, r.body_excerpt()));
                }
            }
            None => {
                if self.examples.len() < 3 {
                    self.examples.push(s.error.clone().unwrap_or_default());
                }
            }
        }
    }
}

/// Merges per-worker tallies.
pub fn merge(tallies: Vec<Tally>) -> Tally {
    let mut t = Tally::default();
    for x in tallies {
        t.all.merge(&x.all);
        t.ok.merge(&x.ok);
        t.counts.merge(&x.counts);
        for e in x.examples {
            if t.examples.len() < 5 {
                t.examples.push(e);
            }
        }
    }
    t
}

/// What a benchmark measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchResult {
    /// What was driven.
    pub target: String,
    /// Concurrency (closed loop).
    pub concurrency: usize,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Requests answered (any status) per second.
    pub requests_per_sec: f64,
    /// 2xx answers per second (confirmed reservations for the reservations bench).
    pub ok_per_sec: f64,
    /// Latency of every answer.
    pub latency: LatencySummary,
    /// Latency of 2xx answers.
    pub latency_ok: LatencySummary,
    /// Status counts.
    pub status_counts: StatusCounts,
    /// Examples of non-2xx answers.
    pub examples: Vec<String>,
    /// Reservations bench: the event afterwards.
    pub event_after: Option<EventView>,
    /// Reservations bench: `sold == confirmed` and audit ok.
    pub zero_oversell: Option<bool>,
    /// Reservations bench: audit text.
    pub audit: Option<String>,
}

impl BenchResult {
    /// Human-readable summary.
    pub fn render(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "target        {}\nconcurrency   {}\nduration      {:.1} s\nrequests      {} ({:.0}/s)\n2xx           {} ({:.1}/s)\nstatus        {}\nlatency (ms)  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}\n",
            self.target,
            self.concurrency,
            self.elapsed_secs,
            self.status_counts.total(),
            self.requests_per_sec,
            self.status_counts.range(200, 299),
            self.ok_per_sec,
            self.status_counts.render(),
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            l.mean_ms
        );
        if !self.examples.is_empty() {
            s.push_str(&format!("non-2xx e.g.  {}\n", self.examples.join(" | ")));
        }
        if let Some(e) = &self.event_after {
            s.push_str(&format!("event after   {}\n", e.render()));
        }
        if let Some(a) = &self.audit {
            s.push_str(&format!("audit         {a}\n"));
        }
        if let Some(z) = self.zero_oversell {
            let sold = self
                .event_after
                .as_ref()
                .map_or_else(|| "?".to_owned(), |e| e.sold.to_string());
            s.push_str(&format!(
                "zero oversell {} (sold {sold}, 201s {}, audit {})\n",
                if z { "PASS" } else { "FAIL" },
                self.status_counts.get(201),
                self.audit.as_deref().unwrap_or("not run")
            ));
        }
        s
    }
}

/// Parameters of the reservations benchmark.
#[derive(Debug, Clone)]
pub struct ReservationsBench {
    /// One reservations process, e.g. `http://127.0.0.1:3001`.
    pub target: String,
    /// Payments service (its chaos is reset first so charges are instant).
    pub payments: Option<String>,
    /// Closed-loop workers.
    pub concurrency: usize,
    /// Run time.
    pub duration: Duration,
    /// Event ids (created fresh); workers take them in turn. Several events spread the load over
    /// the shards of a Redis Cluster backend.
    pub events: Vec<String>,
    /// Event capacity (large enough not to sell out).
    pub capacity: u64,
}

/// The events after the run, added up into one view (`None` if one cannot be read).
async fn settled_total(stack: &Stack, events: &[String]) -> Option<EventView> {
    let mut total: Option<EventView> = None;
    for event in events {
        let e = stack
            .settled_event(event, Duration::from_secs(15))
            .await
            .ok()?;
        total = Some(match total {
            None => e,
            Some(mut t) => {
                t.event_id = format!("{}+{}", t.event_id, e.event_id);
                t.capacity += e.capacity;
                t.available += e.available;
                t.held += e.held;
                t.sold += e.sold;
                t
            }
        });
    }
    total
}

/// Runs the reservations benchmark.
pub async fn reservations(stack: &Stack, b: &ReservationsBench) -> Result<BenchResult, HttpError> {
    if let Some(p) = &b.payments {
        stack.chaos_reset(p).await?;
    }
    stack.chaos_reset(&b.target).await?;
    for event in &b.events {
        stack
            .create_event(
                &b.target,
                event,
                "loadtest bench",
                &EventSpec::General(b.capacity),
            )
            .await?;
    }
    let client = http::client(None, Duration::from_secs(30), b.concurrency.max(1))?;
    let url = format!("{}/api/reservations", b.target);
    let events = Arc::new(b.events.clone());
    let run = std::process::id();
    let started = Instant::now();
    let tallies =
        load::closed_loop(
            b.concurrency,
            b.duration,
            b.capacity,
            move |i| {
                let client = client.clone();
                let url = url.clone();
                let event = &events[i as usize % events.len().max(1)];
                let body = ga_request(event, &format!("bench-{run}-{i}@loadtest.local"), 1);
                async move {
                    http::send(&client, reqwest::Method::POST, &url, Some(&body), &[], None).await
                }
            },
            Tally::default,
        )
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let t = merge(tallies);
    let confirmed = t.counts.get(201);
    let ev = settled_total(stack, &b.events).await;
    let audit = stack.audit(&b.target).await;
    let zero = match (&ev, &audit) {
        (Some(e), Ok(a)) => Some(a.ok && e.sold == confirmed && e.balanced()),
        _ => Some(false),
    };
    let audit = Some(match audit {
        Ok(a) => a.render(),
        Err(e) => format!("unavailable: {e}"),
    });
    Ok(BenchResult {
        target: format!("POST {}/api/reservations (GA, quantity 1)", b.target),
        concurrency: b.concurrency,
        elapsed_secs: elapsed,
        requests_per_sec: t.counts.total() as f64 / elapsed.max(1e-9),
        ok_per_sec: t.counts.range(200, 299) as f64 / elapsed.max(1e-9),
        latency: t.all.summary(),
        latency_ok: t.ok.summary(),
        status_counts: t.counts,
        examples: t.examples,
        event_after: ev,
        zero_oversell: zero,
        audit,
    })
}

/// GET flood at `url` with `concurrency` closed-loop workers for `duration`.
pub async fn get_flood(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<BenchResult, HttpError> {
    let client = http::client(None, Duration::from_secs(30), concurrency.max(1))?;
    let u = url.to_owned();
    let started = Instant::now();
    let tallies = load::closed_loop(
        concurrency,
        duration,
        u64::MAX,
        move |_| {
            let client = client.clone();
            let url = u.clone();
            async move { http::send(&client, reqwest::Method::GET, &url, None, &[], None).await }
        },
        Tally::default,
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let t = merge(tallies);
    Ok(BenchResult {
        target: format!("GET {url}"),
        concurrency,
        elapsed_secs: elapsed,
        requests_per_sec: t.counts.total() as f64 / elapsed.max(1e-9),
        ok_per_sec: t.counts.range(200, 299) as f64 / elapsed.max(1e-9),
        latency: t.all.summary(),
        latency_ok: t.ok.summary(),
        status_counts: t.counts,
        examples: t.examples,
        event_after: None,
        zero_oversell: None,
        audit: None,
    })
}
