//! `cluster-flood` (SPEC §10.3): one client floods every gateway of the scaled stack at once,
//! request `i` going to gateway `i mod N`. Passes when the gateways together accepted what ONE
//! gateway's limit_req arithmetic allows for the whole trace (their `scope: cluster` zones decide
//! on shared state), every other answer is a proper 429, and the backend is unharmed.
//!
//! The tolerance is flood's ±1. The expected count is replayed from the client's send times,
//! while the store decides at arrival, on its own clock, a few milliseconds later and with
//! different jitter on each gateway's path. Under a sustained flood the accepted count is
//! `burst + 1 + floor(rate × span)` over the span between the first and the last decision, so
//! that jitter can move one refill tick (every 500 ms at 2r/s) in or out of the window, never more.
//! A store failure is another matter: a gateway then decides alone at rate/N, so store errors and
//! timeouts are counted and checked separately. A flood that met one is measured once more after
//! the zones drained (a single stall of `timeout_ms` on a machine whose cores the whole stack
//! shares does it); the checks judge the last attempt, the report keeps the earlier one with the
//! store's round-trip times.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::flood::{self, discover_limits, FloodSetup, PATH};
use super::{
    check_audit, metric_delta, post_from, scrape_gateways, settled_metrics, Ctx, ScenarioError,
};
use crate::limit_req::{self, ZoneLimit};
use crate::load::{self, Sample};
use crate::report::ScenarioReport;
use crate::stack::ga_request;
use crate::stats::rate_series;

/// Accepted-count tolerance (see the module documentation).
const TOLERANCE: u64 = 1;
/// Floods at most this often when store round trips failed (see [`run`]).
const ATTEMPTS: u32 = 2;
/// How long the gateways may take to connect to the store and see each other.
const PREFLIGHT_BOUND: Duration = Duration::from_secs(15);

/// What one gateway's `/status` says about its cluster zones.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayView {
    admin: String,
    store_available: Option<bool>,
    gateways_seen: Option<u64>,
    /// `(zone, scope, fallback)` of the route's zones.
    zones: Vec<(String, String, bool)>,
}

impl GatewayView {
    fn from_status(admin: &str, st: &Value, limits: &[ZoneLimit]) -> Self {
        let store = st.get("limitStore");
        Self {
            admin: admin.to_owned(),
            store_available: store
                .and_then(|s| s.get("available"))
                .and_then(Value::as_bool),
            gateways_seen: store
                .and_then(|s| s.get("gateways"))
                .and_then(Value::as_u64),
            zones: limits
                .iter()
                .map(|l| {
                    let z = st.get("limitReqZones").and_then(|z| z.get(&l.zone));
                    (
                        l.zone.clone(),
                        z.and_then(|z| z.get("scope"))
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned(),
                        z.and_then(|z| z.get("fallback"))
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    )
                })
                .collect(),
        }
    }

    /// Store up and every zone of the route shared and not in fallback.
    fn shared(&self) -> bool {
        self.store_available == Some(true)
            && self
                .zones
                .iter()
                .all(|(_, scope, fallback)| scope == "cluster" && !fallback)
    }

    fn render(&self) -> String {
        let zones: Vec<String> = self
            .zones
            .iter()
            .map(|(z, s, f)| format!("{z} {s}{}", if *f { " FALLBACK" } else { "" }))
            .collect();
        format!(
            "{}: store {}, sees {} gateway(s), {}",
            self.admin,
            match self.store_available {
                Some(true) => "up",
                Some(false) => "DOWN",
                None => "absent",
            },
            self.gateways_seen.map_or("?".into(), |n| n.to_string()),
            zones.join(", ")
        )
    }
}

/// Store round trips that failed or timed out, summed over the gateways (`None`: a gateway's
/// metrics could not be read).
fn store_failures(before: &[Option<String>], after: &[Option<String>]) -> Option<f64> {
    ["error", "timeout"]
        .iter()
        .map(|res| {
            metric_delta(
                before,
                after,
                "gateway_limit_store_requests_total",
                &[("result", res)],
            )
        })
        .try_fold(0.0, |acc, d| d.map(|d| acc + d))
}

/// A histogram's increase summed over the gateways, as `(le, count)` per bucket.
fn histogram_delta(
    before: &[Option<String>],
    after: &[Option<String>],
    name: &str,
) -> Vec<(String, f64)> {
    let bucket = format!("{name}_bucket");
    let mut les: Vec<String> = after
        .iter()
        .flatten()
        .flat_map(|text| text.lines())
        .filter_map(|l| l.strip_prefix(bucket.as_str()))
        .filter_map(|rest| rest.split("le=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    let bound = |le: &String| le.parse::<f64>().unwrap_or(f64::INFINITY);
    les.sort_by(|a, b| bound(a).total_cmp(&bound(b)));
    les.dedup();
    les.into_iter()
        .filter_map(|le| {
            let d = metric_delta(before, after, &bucket, &[("le", le.as_str())])?;
            Some((le, d))
        })
        .collect()
}

/// What the gateways would accept if each decided alone on its share of the trace (the
/// `scope: local` answer), for the report.
fn local_scope_answer(limits: &[ZoneLimit], samples: &[Sample], n: usize) -> u64 {
    (0..n)
        .map(|g| {
            let times: Vec<i64> = samples
                .iter()
                .filter(|s| s.seq as usize % n == g)
                .map(|s| s.start.as_millis() as i64)
                .collect();
            limit_req::expected_passes(limits, &times)
        })
        .sum()
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let gateways = stack.targets.gateways.clone();
    let admins = stack.targets.admins.clone();
    if gateways.len() < 2 {
        return Err(ScenarioError::Setup(format!(
            "cluster-flood needs at least two gateways (--gateway URL, repeatable); got {gateways:?}"
        )));
    }
    let n = gateways.len();
    r.figure("gateways", &gateways);
    let (limits, source) = discover_limits(ctx).await;
    r.figure("limits", &limits);
    r.figure("limitsSource", &source);

    // Every gateway must be deciding on the shared store, and must have seen the others'
    // heartbeats, before the flood; else the count below measures something else (a gateway
    // that falls back decides at rate / the gateways it has seen). Gateways started a moment
    // ago get a few seconds.
    let mut views = Vec::new();
    let deadline = tokio::time::Instant::now() + PREFLIGHT_BOUND;
    loop {
        views.clear();
        for a in &admins {
            let st = stack.gateway_status_at(a).await?;
            views.push(GatewayView::from_status(a, &st, &limits));
        }
        let ready = views
            .iter()
            .all(|v| v.shared() && v.gateways_seen >= Some(n as u64));
        if ready || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r.figure("gatewaysBefore", &views);
    r.check(
        "every gateway decides the route's zones in the shared store",
        format!(
            "{} admin listeners: store up, scope cluster, no fallback, {n} gateways seen",
            admins.len()
        ),
        views
            .iter()
            .map(GatewayView::render)
            .collect::<Vec<_>>()
            .join(" | "),
        views.len() == n
            && views
                .iter()
                .all(|v| v.shared() && v.gateways_seen >= Some(n as u64)),
    );

    let FloodSetup {
        rate,
        duration,
        event,
        pool,
    } = flood::prepare(ctx, &limits, "CFLOOD", 11).await?;
    // Warm every gateway's store connection and script cache with one request from another
    // client (its own limiter key), so the flood's first decisions are not the slow first ones.
    let warm = ctx.pool(1, 12, Duration::from_secs(20))?;
    let mut warm_sold = 0u64;
    for g in &gateways {
        let body = ga_request(&event, "cflood-warmup@loadtest.local", 1);
        let rep = post_from(
            warm.get(0),
            &format!("{g}{PATH}"),
            &body,
            Duration::from_secs(20),
        )
        .await?;
        warm_sold += u64::from(rep.is_success());
    }
    let src = Arc::new(pool.get(0).clone());
    let urls: Arc<Vec<String>> = Arc::new(gateways.iter().map(|g| format!("{g}{PATH}")).collect());
    let mut attempt = 1;
    // Seats sold by attempts that were measured again.
    let mut earlier_sold = 0u64;
    let (samples, before, after) = loop {
        let before = scrape_gateways(&ctx.stack, &admins).await;
        let samples = load::paced(rate, duration, 16, |i| {
            let src = src.clone();
            let url = urls[i as usize % n].clone();
            let body = ga_request(&event, &format!("cflood-{i}@loadtest.local"), 1);
            async move { post_from(&src, &url, &body, Duration::from_secs(20)).await }
        })
        .await;
        let after = settled_metrics(
            &ctx.stack,
            &admins,
            &before,
            load::counts(&samples).get(429),
        )
        .await;
        // A store round trip that failed or came late sends that decision, and while the breaker
        // is open every decision of its gateway, to the local fallback: the trace then no longer
        // measures the shared arithmetic. On a machine whose cores are shared with the whole
        // stack one stall of `timeout_ms` does that; measure once more (the report keeps both).
        let failures = store_failures(&before, &after);
        if attempt >= ATTEMPTS || failures.is_none_or(|f| f < 0.5) {
            break (samples, before, after);
        }
        let counts = load::counts(&samples);
        earlier_sold += counts.range(200, 299);
        r.figure(
            &format!("attempt{attempt}"),
            serde_json::json!({
                "storeFailures": failures,
                "accepted": counts.range(200, 299),
                "sent": samples.len(),
                "storeDurations": histogram_delta(&before, &after, "gateway_limit_store_duration_seconds"),
            }),
        );
        let drain = flood::drain_time(&limits);
        eprintln!(
            "[loadtest] cluster-flood: {failures:?} store round trips failed during attempt {attempt}; draining {:.1} s and measuring again",
            drain.as_secs_f64()
        );
        tokio::time::sleep(drain).await;
        attempt += 1;
    };
    r.figure("attempts", attempt);
    r.figure(
        "storeDurations",
        histogram_delta(&before, &after, "gateway_limit_store_duration_seconds"),
    );

    let counts = load::counts(&samples);
    let sent = samples.len() as u64;
    let span = samples.last().map(|s| s.start).unwrap_or_default();
    let times: Vec<i64> = samples.iter().map(|s| s.start.as_millis() as i64).collect();
    let expected = limit_req::expected_passes(&limits, &times);
    let accepted = counts.range(200, 299);
    let rejected = counts.get(429);
    let per_gateway: Vec<(String, u64, u64)> = gateways
        .iter()
        .enumerate()
        .map(|(g, url)| {
            let mine = samples.iter().filter(|s| s.seq as usize % n == g);
            let (sent, ok) = mine.fold((0, 0), |(s, o), x| {
                (
                    s + 1,
                    o + u64::from(x.reply.as_ref().is_some_and(|r| r.is_success())),
                )
            });
            (url.clone(), sent, ok)
        })
        .collect();
    let local_answer = local_scope_answer(&limits, &samples, n);
    let mut bad = Vec::new();
    let mut retry_after_ok = 0u64;
    for s in &samples {
        match &s.reply {
            Some(rep) if rep.is_success() => {}
            Some(rep)
                if rep.status == 429 && rep.error_code().as_deref() == Some("rate_limited") =>
            {
                retry_after_ok += u64::from(rep.retry_after().is_some_and(|x| x >= 1));
            }
            Some(rep) if bad.len() < 3 => {
                bad.push(format!("{} {}", rep.status, rep.body_excerpt()))
            }
            None if bad.len() < 3 => bad.push(s.error.clone().unwrap_or_default()),
            _ => {}
        }
    }
    r.figure("sent", sent);
    r.figure("offeredRate", rate);
    r.figure("spanMs", span.as_millis() as u64);
    r.figure("statusCounts", &counts);
    r.figure("perGateway", &per_gateway);
    r.figure("eachGatewayAloneWouldAccept", local_answer);
    r.check(
        "accepted (2xx) over all gateways",
        format!(
            "{expected} ± {TOLERANCE}: one gateway's arithmetic for the whole trace ({sent} sent over {:.2} s to {n} gateways; alone each would let {local_answer} through in all)",
            span.as_secs_f64()
        ),
        format!(
            "{accepted} ({})",
            per_gateway
                .iter()
                .map(|(g, _, ok)| format!("{ok} via {}", crate::targets::authority(g)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        accepted.abs_diff(expected) <= TOLERANCE,
    );
    r.check(
        "every gateway took its share of the flood",
        format!("≈ {} requests each", sent / n as u64),
        per_gateway
            .iter()
            .map(|(_, s, _)| s.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        per_gateway.iter().all(|(_, s, _)| *s > 0),
    );
    r.check(
        "every other answer is 429 rate_limited with Retry-After",
        format!("{} × 429", sent.saturating_sub(accepted)),
        if bad.is_empty() {
            format!(
                "{} ({retry_after_ok} with Retry-After ≥ 1 s)",
                counts.render()
            )
        } else {
            format!("{} — e.g. {}", counts.render(), bad.join(" | "))
        },
        rejected + accepted == sent && bad.is_empty() && retry_after_ok == rejected,
    );
    let store_failures = store_failures(&before, &after);
    for res in ["ok", "error", "timeout"] {
        let d = metric_delta(
            &before,
            &after,
            "gateway_limit_store_requests_total",
            &[("result", res)],
        );
        r.figure(&format!("storeRoundTrips_{res}"), d);
    }
    r.check(
        "store round trips failed or timed out during the flood (a gateway then decides alone)",
        "0",
        store_failures.map_or("gateway /metrics unreachable".into(), |f| format!("{f}")),
        store_failures.is_some_and(|f| f < 0.5),
    );
    let rejected_metric = metric_delta(&before, &after, "gateway_ratelimit_rejected_total", &[]);
    r.check(
        "gateway_ratelimit_rejected_total increase, summed over the gateways",
        format!("{rejected} (our 429s)"),
        rejected_metric.map_or("gateway /metrics unreachable".into(), |d| format!("{d}")),
        rejected_metric.is_some_and(|d| (d - rejected as f64).abs() < 0.5),
    );
    let ev = stack.settled_event(&event, Duration::from_secs(10)).await?;
    r.figure("eventAfter", &ev);
    r.check(
        "seats sold == 201s (flood, warm-up, attempts measured again)",
        format!("sold {}, held 0", accepted + warm_sold + earlier_sold),
        ev.render(),
        ev.sold == accepted + warm_sold + earlier_sold && ev.held == 0 && ev.balanced(),
    );
    check_audit(ctx, r).await;
    chart(ctx, r, &samples, duration.max(span), accepted, rejected)?;
    Ok(())
}

fn chart(
    ctx: &Ctx,
    r: &mut ScenarioReport,
    samples: &[Sample],
    span: Duration,
    accepted: u64,
    rejected: u64,
) -> Result<(), ScenarioError> {
    let bucket = Duration::from_millis(250);
    let series = rate_series(
        &samples.iter().map(Sample::point).collect::<Vec<_>>(),
        bucket,
        span,
    );
    flood::write_rate_chart(
        ctx,
        r,
        "cluster-flood",
        format!(
            "cluster-flood: {} POST {PATH} spread over {} gateways — {accepted} accepted, {rejected} × 429",
            samples.len(),
            ctx.stack.targets.gateways.len()
        ),
        bucket,
        series,
        Vec::new(),
    )
}
