//! Latency percentiles (HDR histogram), status counts and per-interval series.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// An HDR histogram of latencies in microseconds (1 µs .. 1 h, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant histogram bounds are valid");
        Self { hist }
    }

    /// Records one latency (clamped into range).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        // Within bounds by construction; saturating_record never fails.
        self.hist.saturating_record(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides; ignore the impossible error rather than panicking.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.hist.len(),
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p90_ms: ms(self.hist.value_at_quantile(0.90)),
            p95_ms: ms(self.hist.value_at_quantile(0.95)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            max_ms: ms(self.hist.max()),
            mean_ms: self.hist.mean() / 1000.0,
        }
    }
}

/// Count per status code (`"201"`, `"429"`) or `"error"` for transport failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StatusCounts(pub BTreeMap<String, u64>);

impl StatusCounts {
    /// Counts one answer (`None` = transport error).
    pub fn add(&mut self, status: Option<u16>) {
        let key = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        *self.0.entry(key).or_insert(0) += 1;
    }

    /// Adds all counts of another.
    pub fn merge(&mut self, other: &StatusCounts) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Count of one status.
    pub fn get(&self, status: u16) -> u64 {
        self.0.get(&status.to_string()).copied().unwrap_or(0)
    }

    /// Transport errors.
    pub fn errors(&self) -> u64 {
        self.0.get("error").copied().unwrap_or(0)
    }

    /// Sum over statuses in `lo..=hi`.
    pub fn range(&self, lo: u16, hi: u16) -> u64 {
        self.0
            .iter()
            .filter_map(|(k, v)| k.parse::<u16>().ok().map(|s| (s, v)))
            .filter(|(s, _)| (lo..=hi).contains(s))
            .map(|(_, v)| v)
            .sum()
    }

    /// Total answers and errors.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// `201×1 409×499` style text.
    pub fn render(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Classes a chart stacks: what a load-test reader cares to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 429 (rate limited).
    RateLimited,
    /// Other 4xx (conflicts, validation).
    ClientError,
    /// 5xx.
    ServerError,
    /// No answer (connection failure, timeout).
    TransportError,
}

impl StatusClass {
    /// All classes in stacking order.
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Success,
        StatusClass::RateLimited,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::TransportError,
    ];

    /// Class of a status (`None` = transport error).
    pub fn of(status: Option<u16>) -> Self {
        match status {
            None => Self::TransportError,
            Some(429) => Self::RateLimited,
            Some(s) if (200..300).contains(&s) => Self::Success,
            Some(s) if (500..600).contains(&s) => Self::ServerError,
            Some(_) => Self::ClientError,
        }
    }

    /// Legend label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "2xx",
            Self::RateLimited => "429",
            Self::ClientError => "other 4xx",
            Self::ServerError => "5xx",
            Self::TransportError => "no answer",
        }
    }

    /// Chart colour.
    pub fn color(self) -> &'static str {
        match self {
            Self::Success => "#2e9e4f",
            Self::RateLimited => "#e8a33d",
            Self::ClientError => "#5b7bd5",
            Self::ServerError => "#d64545",
            Self::TransportError => "#555555",
        }
    }
}

/// Responses per second of each class, per time bucket: `series[class][bucket]`.
pub fn rate_series(
    samples: &[(Duration, Option<u16>)],
    bucket: Duration,
    span: Duration,
) -> Vec<(StatusClass, Vec<f64>)> {
    let bucket_s = bucket.as_secs_f64().max(0.001);
    let n = ((span.as_secs_f64() / bucket_s).ceil() as usize).clamp(1, 10_000);
    let mut counts = vec![vec![0u64; n]; StatusClass::ALL.len()];
    for (at, status) in samples {
        let b = ((at.as_secs_f64() / bucket_s) as usize).min(n - 1);
        let c = StatusClass::ALL
            .iter()
            .position(|k| *k == StatusClass::of(*status))
            .unwrap_or(0);
        counts[c][b] += 1;
    }
    StatusClass::ALL
        .iter()
        .zip(counts)
        .map(|(k, v)| (*k, v.into_iter().map(|c| c as f64 / bucket_s).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut l = Latencies::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.5, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.5, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn counts_and_classes() {
        let mut c = StatusCounts::default();
        for s in [Some(201), Some(429), Some(429), None, Some(503)] {
            c.add(s);
        }
        assert_eq!(c.get(429), 2);
        assert_eq!(c.errors(), 1);
        assert_eq!(c.range(500, 599), 1);
        assert_eq!(c.total(), 5);
        assert_eq!(c.render(), "201×1 429×2 503×1 error×1");
        assert_eq!(StatusClass::of(Some(409)), StatusClass::ClientError);
    }

    #[test]
    fn series_per_second() {
        let samples = vec![
            (Duration::from_millis(100), Some(201)),
            (Duration::from_millis(200), Some(429)),
            (Duration::from_millis(600), Some(429)),
        ];
        let s = rate_series(&samples, Duration::from_millis(500), Duration::from_secs(1));
        let rl = &s
            .iter()
            .find(|(k, _)| *k == StatusClass::RateLimited)
            .expect("429")
            .1;
        assert_eq!(rl, &vec![2.0, 2.0]);
    }
}
