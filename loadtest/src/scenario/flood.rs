//! `flood`: one client sends far more reservation requests than its zones allow, through the
//! gateway. Passes when the accepted count matches NGINX's limit_req arithmetic for the route's
//! zones, every rejection is a proper 429, and the backend is unharmed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{
    check_audit, metric_delta, post_from, scrape_gateways, settled_metrics, Ctx, ScenarioError,
};
use crate::chart::{Series, StackedChart};
use crate::limit_req::{self, ZoneLimit};
use crate::load;
use crate::report::ScenarioReport;
use crate::sources::SourcePool;
use crate::stack::{ga_request, metric_sum, EventSpec};
use crate::stats::{rate_series, Latencies, StatusClass};

/// Path flooded.
pub const PATH: &str = "/api/reservations";

/// The limits of the reservations route and where they came from: `--limit` flags, the gateway's
/// config file (path from `/status`, rates from `/status`), or the shipped configuration.
pub async fn discover_limits(ctx: &Ctx) -> (Vec<ZoneLimit>, String) {
    if let Some(l) = &ctx.opts.limits {
        return (l.clone(), "--limit flags".into());
    }
    let status = ctx.stack.gateway_status().await.ok();
    if let Some(st) = &status {
        let path = st
            .get("config")
            .and_then(|c| c.get("path"))
            .and_then(Value::as_str);
        // The config path /status reports is the gateway's own: inside a container it does not
        // exist on this host, so the file the stack mounts is read instead.
        let fallback = if ctx.stack.targets.cluster {
            "conf/gateway.cluster.yaml"
        } else if ctx.compose() {
            "conf/gateway.yaml"
        } else {
            "conf/gateway.local.yaml"
        };
        let candidates: Vec<String> = path
            .into_iter()
            .map(str::to_owned)
            .chain(std::iter::once(fallback.to_owned()))
            .collect();
        for p in candidates {
            let Ok(text) = std::fs::read_to_string(Path::new(&p)) else {
                continue;
            };
            let Ok(conf) = serde_norway::from_str::<Value>(&text) else {
                continue;
            };
            if let Ok(Some(mut limits)) = limit_req::route_limits(&conf, PATH) {
                limit_req::apply_status_rates(&mut limits, st);
                return (limits, format!("{p} (rates from /status)"));
            }
        }
        let mut l = limit_req::shipped_reservation_limits();
        limit_req::apply_status_rates(&mut l, st);
        return (l, "shipped bursts, rates from /status".into());
    }
    (
        limit_req::shipped_reservation_limits(),
        "shipped configuration (gateway /status unreachable)".into(),
    )
}

/// A flood's plan and fixtures.
pub struct FloodSetup {
    /// Offered rate (requests/s).
    pub rate: f64,
    /// How long to flood.
    pub duration: Duration,
    /// The general-admission event created for the flood (room for every planned request).
    pub event: String,
    /// The client address(es) of the flood.
    pub pool: SourcePool,
}

/// Plans a flood from the options, creates its event (`<tag>-…`) and takes client pool `pool`;
/// when the gateway sees one shared address (no distinct sources, or Docker's port mapping) it
/// first waits until earlier traffic has drained from every zone.
pub async fn prepare(
    ctx: &Ctx,
    limits: &[ZoneLimit],
    tag: &str,
    pool: u16,
) -> Result<FloodSetup, ScenarioError> {
    let rate = ctx.opts.flood_rate.clamp(1.0, 20_000.0);
    let duration = ctx.opts.flood_duration.min(Duration::from_secs(120));
    let planned = (rate * duration.as_secs_f64()).ceil() as u64;
    let event = ctx.event_id(tag);
    ctx.stack
        .create_event(
            ctx.stack.targets.primary(),
            &event,
            &format!("loadtest {}", tag.to_ascii_lowercase()),
            &EventSpec::General(planned + 100),
        )
        .await?;
    let pool = ctx.pool(1, pool, Duration::from_secs(20))?;
    if !pool.distinct() || ctx.compose() {
        let drain = drain_time(limits);
        eprintln!(
            "[loadtest] {}: the gateway sees one client address; waiting {:.1} s for the zones to drain",
            tag.to_ascii_lowercase(),
            drain.as_secs_f64()
        );
        tokio::time::sleep(drain).await;
    }
    Ok(FloodSetup {
        rate,
        duration,
        event,
        pool,
    })
}

/// How long a key needs to drain completely from a full burst in every zone (at most 60 s).
pub fn drain_time(limits: &[ZoneLimit]) -> Duration {
    let ms = limits
        .iter()
        .map(|l| (l.burst + 1) * 1_000_000 / l.rate_milli.max(1))
        .max()
        .unwrap_or(0)
        .min(60_000);
    Duration::from_millis(ms)
}

fn describe(limits: &[ZoneLimit]) -> String {
    limits
        .iter()
        .map(|l| {
            format!(
                "{} {}r/s b{}{}",
                l.zone,
                l.rate_per_sec(),
                l.burst,
                if l.applies() { "" } else { " (not limiting)" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let (limits, source) = discover_limits(ctx).await;
    r.figure("limits", &limits);
    r.figure("limitsSource", &source);
    let FloodSetup {
        rate,
        duration,
        event,
        pool,
    } = prepare(ctx, &limits, "FLOOD", 2).await?;
    let admins = [stack.targets.admin.clone()];
    let metrics_before = scrape_gateways(stack, &admins).await;
    let src = Arc::new(pool.get(0).clone());
    let url = ctx.gw(PATH);
    let samples = load::paced(rate, duration, 16, |i| {
        let src = src.clone();
        let url = url.clone();
        let body = ga_request(&event, &format!("flood-{i}@loadtest.local"), 1);
        async move { post_from(&src, &url, &body, Duration::from_secs(20)).await }
    })
    .await;
    let counts = load::counts(&samples);
    let metrics_after = settled_metrics(stack, &admins, &metrics_before, counts.get(429)).await;

    let sent = samples.len() as u64;
    let span = samples.last().map(|s| s.start).unwrap_or_default();
    let times: Vec<i64> = samples.iter().map(|s| s.start.as_millis() as i64).collect();
    let expected = limit_req::expected_passes(&limits, &times);
    let accepted = counts.range(200, 299);
    let mut lat_ok = Latencies::new();
    let mut lat_429 = Latencies::new();
    let mut bad_rejections = Vec::new();
    let mut retry_after_ok = 0u64;
    let mut zones = std::collections::BTreeMap::<String, u64>::new();
    for s in &samples {
        match &s.reply {
            Some(rep) if rep.is_success() => lat_ok.record(s.latency),
            Some(rep) if rep.status == 429 => {
                lat_429.record(s.latency);
                let body = rep.json();
                let code = body
                    .as_ref()
                    .and_then(|b| b.get("error"))
                    .and_then(Value::as_str);
                let zone = body
                    .as_ref()
                    .and_then(|b| b.get("zone"))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                *zones.entry(zone).or_insert(0) += 1;
                if code != Some("rate_limited") && bad_rejections.len() < 3 {
                    bad_rejections.push(format!("429 {}", rep.body_excerpt()));
                }
                if rep.retry_after().is_some_and(|s| s >= 1) {
                    retry_after_ok += 1;
                }
            }
            Some(rep) => {
                if bad_rejections.len() < 3 {
                    bad_rejections.push(format!("{} {}", rep.status, rep.body_excerpt()));
                }
            }
            None => {
                if bad_rejections.len() < 3 {
                    bad_rejections.push(s.error.clone().unwrap_or_default());
                }
            }
        }
    }
    let rejected = counts.get(429);
    r.figure("sent", sent);
    r.figure("offeredRate", rate);
    r.figure("spanMs", span.as_millis() as u64);
    r.figure("statusCounts", &counts);
    r.figure("rejectedByZone", &zones);
    r.figure("latencyAccepted", lat_ok.summary());
    r.figure("latencyRejected", lat_429.summary());
    r.figure(
        "distinctSourceAddress",
        pool.get(0).addr.map(|a| a.to_string()),
    );
    r.check(
        "accepted (2xx)",
        format!(
            "{expected} ± 1 ({}; {sent} sent over {:.2} s)",
            describe(&limits),
            span.as_secs_f64()
        ),
        accepted.to_string(),
        accepted.abs_diff(expected) <= 1,
    );
    r.check(
        "every other answer is 429 rate_limited",
        format!("{} × 429", sent.saturating_sub(accepted)),
        if bad_rejections.is_empty() {
            counts.render()
        } else {
            format!("{} — e.g. {}", counts.render(), bad_rejections.join(" | "))
        },
        rejected + accepted == sent && bad_rejections.is_empty(),
    );
    r.check(
        "Retry-After on 429s",
        format!("on all {rejected}, ≥ 1 s"),
        format!("{retry_after_ok} of {rejected}"),
        retry_after_ok == rejected,
    );
    let s429 = lat_429.summary();
    r.figure("rejectionP99Ms", s429.p99_ms);
    let name = "gateway_ratelimit_rejected_total";
    match metric_delta(&metrics_before, &metrics_after, name, &[]) {
        Some(delta) => {
            let present = metrics_after
                .iter()
                .flatten()
                .any(|a| metric_sum(a, name, &[]).is_some());
            r.check(
                "gateway_ratelimit_rejected_total increase",
                format!("{rejected} (our 429s)"),
                if present {
                    format!("{delta}")
                } else {
                    "metric absent".into()
                },
                present && (delta - rejected as f64).abs() < 0.5,
            );
        }
        None => r.check(
            "gateway_ratelimit_rejected_total increase",
            format!("{rejected} (our 429s)"),
            "gateway /metrics unreachable",
            false,
        ),
    }
    // The backend is unharmed.
    let mut healthy = Vec::new();
    for rep in &stack.targets.reservations {
        let h = stack.health(rep).await;
        healthy.push(match h {
            Ok(x) if x.status == 200 => "200".to_owned(),
            Ok(x) => x.status.to_string(),
            Err(e) => e.to_string(),
        });
    }
    r.check(
        "reservations replicas healthy after the flood",
        "200 on every /health",
        healthy.join(", "),
        healthy.iter().all(|h| h == "200"),
    );
    let ev = stack.settled_event(&event, Duration::from_secs(10)).await?;
    r.figure("eventAfter", &ev);
    r.check(
        "seats sold == 201s",
        format!("sold {accepted}, held 0"),
        ev.render(),
        ev.sold == accepted && ev.held == 0 && ev.balanced(),
    );
    check_audit(ctx, r).await;

    // Chart: responses per second by class.
    let bucket = Duration::from_millis(if duration <= Duration::from_secs(10) {
        250
    } else {
        1000
    });
    let series = rate_series(
        &samples.iter().map(load::Sample::point).collect::<Vec<_>>(),
        bucket,
        duration.max(span),
    );
    write_rate_chart(
        ctx,
        r,
        "flood",
        format!(
            "flood: {sent} POST {PATH} at {rate} r/s from one client — {accepted} accepted, {rejected} × 429"
        ),
        bucket,
        series,
        Vec::new(),
    )
}

/// Writes `<name>.svg`: answers per second by status class (empty classes left out), and lists
/// it among the report's artifacts.
pub fn write_rate_chart(
    ctx: &Ctx,
    r: &mut ScenarioReport,
    name: &str,
    title: String,
    bucket: Duration,
    series: Vec<(StatusClass, Vec<f64>)>,
    markers: Vec<(f64, String)>,
) -> Result<(), ScenarioError> {
    let chart = StackedChart {
        title,
        y_label: "responses per second (by send time)".into(),
        bucket_secs: bucket.as_secs_f64(),
        series: series
            .into_iter()
            .filter(|(_, v)| v.iter().any(|x| *x > 0.0))
            .map(|(class, values)| Series {
                label: class.label().into(),
                color: class.color().into(),
                values,
            })
            .collect(),
        markers,
    };
    let path = ctx.opts.out_dir.join(format!("{name}.svg"));
    write_file(&path, &chart.to_svg())?;
    r.artifacts.push(path.display().to_string());
    Ok(())
}

/// Writes a file, creating its directory.
pub fn write_file(path: &Path, text: &str) -> Result<(), ScenarioError> {
    let io = |source| ScenarioError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_time_of_the_shipped_limits() {
        // per_ip: 21 requests at 1666 milli-requests/s; reservations: 6 at 2000.
        let d = drain_time(&limit_req::shipped_reservation_limits());
        assert_eq!(d, Duration::from_millis(12_605));
        assert_eq!(drain_time(&[]), Duration::ZERO);
    }
}
