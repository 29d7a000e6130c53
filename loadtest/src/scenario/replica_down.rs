//! `replica-down`: steady reads through the gateway while the second reservations replica goes
//! down (chaos `down`, a killed process, or `docker compose stop reservations-2`). Reported like a
//! monitoring system: time to detect, client-visible errors, time to recover.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::flood::write_file;
use super::{get_from, ms, Ctx, ScenarioError};
use crate::chart::{Series, StackedChart};
use crate::faults::{self, Compose, ProcessSpec, RestoreAction};
use crate::load::{self, Sample};
use crate::report::ScenarioReport;
use crate::stack::{find_server, metric_sum_prefix, server_in_service, status_servers};
use crate::stats::rate_series;
use crate::targets::{authority, port};

/// Upstream name in the gateway configuration.
const UPSTREAM: &str = "reservations";
/// SPEC §7: a killed server must stop receiving traffic within 1 s.
const DETECT_GOAL: Duration = Duration::from_secs(1);
/// Bound on waiting for recovery (an outlier ejection lasts 10 s by default).
const RECOVER_BOUND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Chaos,
    Kill,
    Compose,
}

/// Polls `/status` every 50 ms until the server's in-service state equals `want`, at most
/// `limit`; returns when it happened.
async fn wait_state(ctx: &Ctx, server: &str, want: bool, limit: Duration) -> Option<Instant> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(st) = ctx.stack.gateway_status().await {
            if let Some(s) = find_server(&st, UPSTREAM, server) {
                if server_in_service(s) == want {
                    return Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn is_error(s: &Sample) -> bool {
    match s.status() {
        None => true,
        Some(st) => !(200..300).contains(&st) && st != 429,
    }
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let victim =
        stack.targets.reservations.get(1).cloned().ok_or_else(|| {
            ScenarioError::Setup("replica-down needs two --reservations URLs".into())
        })?;
    let status = stack.gateway_status().await?;
    let needle = match &stack.targets.compose {
        Some(c) => c.replica_service.clone(),
        None => authority(&victim).to_owned(),
    };
    let server = match find_server(&status, UPSTREAM, &needle) {
        Some(s) => s,
        None => status_servers(&status, UPSTREAM).get(1).copied().ok_or_else(|| {
            ScenarioError::Setup(format!(
                "gateway /status lists no server matching {needle:?} (nor a second one) in upstream {UPSTREAM}"
            ))
        })?,
    };
    let server_name = server
        .get("server")
        .or_else(|| server.get("address"))
        .and_then(Value::as_str)
        .unwrap_or(&needle)
        .to_owned();
    if !server_in_service(server) {
        return Err(ScenarioError::Setup(format!(
            "{server_name} is not in service before the fault: {server}"
        )));
    }
    let mode = if stack.targets.compose.is_some() {
        Mode::Compose
    } else if ctx.opts.kill_pid.is_some() || ctx.opts.kill {
        Mode::Kill
    } else {
        Mode::Chaos
    };
    r.figure("server", &server_name);

    // Steady reads.
    let pool = Arc::new(ctx.pool(200, 6, Duration::from_secs(20))?);
    let stop = Arc::new(AtomicBool::new(false));
    let url = ctx.gw("/api/events");
    let rate = ctx.opts.read_rate.clamp(1.0, 5000.0);
    let clients = ctx.opts.read_clients.clamp(1, 512);
    let t0 = Instant::now();
    let loader = {
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            load::paced_until(rate, Duration::from_secs(120), clients, &stop, |_| {
                let pool = pool.clone();
                let url = url.clone();
                async move { get_from(pool.pick(), &url, Duration::from_secs(20)).await }
            })
            .await
        })
    };
    let result = measure(ctx, r, mode, &victim, &server_name, t0).await;
    stop.store(true, Ordering::Relaxed);
    let samples = loader.await.unwrap_or_default();
    let marks = result?;

    let at = |i: Option<Instant>| i.map(|i| i.saturating_duration_since(t0));
    // Baseline: reads answered before the injection began. A read still in flight when the
    // injection was sent may meet the fault, so it counts as "during the fault".
    let fault_start = marks.inject_start.saturating_duration_since(t0);
    let detect = at(marks.detected);
    let healthy = at(marks.healthy);
    let end_of_fault = healthy.unwrap_or(Duration::MAX);
    let answered_before_fault = |s: &Sample| s.start + s.latency < fault_start;
    let baseline: Vec<&Sample> = samples
        .iter()
        .filter(|s| answered_before_fault(s))
        .collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| !answered_before_fault(s) && s.start <= end_of_fault)
        .collect();
    let before_detect = during
        .iter()
        .filter(|s| detect.is_none_or(|d| s.start < d) && is_error(s))
        .count();
    let after_detect = during
        .iter()
        .filter(|s| detect.is_some_and(|d| s.start >= d) && is_error(s))
        .count();
    let limited = samples.iter().filter(|s| s.status() == Some(429)).count();
    let mut examples: Vec<String> = during
        .iter()
        .filter(|s| is_error(s))
        .take(3)
        .map(|s| match (&s.reply, &s.error) {
            (Some(rep), _) => format!("{} {}", rep.status, rep.body_excerpt()),
            (None, Some(e)) => e.clone(),
            _ => "?".into(),
        })
        .collect();
    examples.dedup();
    r.figure("mode", format!("{mode:?}").to_lowercase());
    r.figure("readsTotal", samples.len());
    r.figure("readsDuringFault", during.len());
    r.figure("errorsBeforeDetection", before_detect);
    r.figure("errorsAfterDetection", after_detect);
    r.figure("rateLimited", limited);
    r.figure("statusCounts", load::counts(&samples));
    r.figure("injectMs", marks.inject_took.as_millis() as u64);
    let detect_ms = marks
        .detected
        .map(|d| d.saturating_duration_since(marks.fault));
    r.figure("timeToDetectMs", detect_ms.map(|d| d.as_millis() as u64));
    r.check(
        "baseline reads (before the fault)",
        "all 2xx",
        format!(
            "{} of {} ({} × 429)",
            baseline
                .iter()
                .filter(|s| s.reply.as_ref().is_some_and(|x| x.is_success()))
                .count(),
            baseline.len(),
            baseline.iter().filter(|s| s.status() == Some(429)).count()
        ),
        !baseline.is_empty() && baseline.iter().all(|s| !is_error(s)),
    );
    r.check(
        "time to detect (out of service in /status)",
        format!("< {}", ms(DETECT_GOAL)),
        detect_ms
            .map(ms)
            .unwrap_or_else(|| "not detected within 10 s".into()),
        detect_ms.is_some_and(|d| d < DETECT_GOAL),
    );
    let err_text = |n: usize| {
        if examples.is_empty() || n == 0 {
            n.to_string()
        } else {
            format!("{n}, e.g. {}", examples.join(" | "))
        }
    };
    match mode {
        Mode::Chaos => {
            r.figure(
                "note",
                "chaos `down` makes the replica answer 503 service_down: requests routed to it before \
                 the gateway ejects it see that 503 (not retried: SPEC retries only connection failures); \
                 use --kill or --compose for a crash",
            );
            r.check(
                "client-visible read errors after detection",
                format!("0 of {} reads during the fault", during.len()),
                format!(
                    "{} ({before_detect} before detection: chaos 503s, see note)",
                    err_text(after_detect)
                ),
                after_detect == 0,
            );
        }
        Mode::Kill | Mode::Compose => r.check(
            "client-visible read errors during the fault",
            format!("0 of {} reads", during.len()),
            err_text(before_detect + after_detect),
            before_detect + after_detect == 0,
        ),
    }
    let recover_ms = marks
        .healthy
        .map(|h| h.saturating_duration_since(marks.restored));
    r.figure("timeToRecoverMs", recover_ms.map(|d| d.as_millis() as u64));
    r.check(
        "time to recover (in service again after restore)",
        format!("< {} s", RECOVER_BOUND.as_secs()),
        recover_ms
            .map(ms)
            .unwrap_or_else(|| "not back in service".into()),
        recover_ms.is_some(),
    );
    let traffic_ms = marks
        .traffic
        .map(|t| t.saturating_duration_since(marks.restored));
    r.figure("timeToTrafficMs", traffic_ms.map(|d| d.as_millis() as u64));
    r.check(
        "replica receives reads again",
        "its /api/ request count rises",
        traffic_ms
            .map(|d| format!("after {} from restore", ms(d)))
            .unwrap_or_else(|| "no new requests seen".into()),
        traffic_ms.is_some(),
    );

    // Chart with the monitoring marks.
    let span = samples.last().map(|s| s.start).unwrap_or_default();
    let mut markers = vec![(fault_start.as_secs_f64(), "fault".to_owned())];
    if let Some(d) = detect {
        markers.push((d.as_secs_f64(), "detected".into()));
    }
    markers.push((
        marks.restored.saturating_duration_since(t0).as_secs_f64(),
        "restore".into(),
    ));
    if let Some(h) = healthy {
        markers.push((h.as_secs_f64(), "healthy".into()));
    }
    let chart = StackedChart {
        title: format!(
            "replica-down ({}): GET /api/events through the gateway",
            format!("{mode:?}").to_lowercase()
        ),
        y_label: "responses per second".into(),
        bucket_secs: 0.25,
        series: rate_series(
            &samples.iter().map(Sample::point).collect::<Vec<_>>(),
            Duration::from_millis(250),
            span,
        )
        .into_iter()
        .filter(|(_, v)| v.iter().any(|x| *x > 0.0))
        .map(|(c, values)| Series {
            label: c.label().into(),
            color: c.color().into(),
            values,
        })
        .collect(),
        markers,
    };
    let path = ctx.opts.out_dir.join("replica-down.svg");
    write_file(&path, &chart.to_svg())?;
    r.artifacts.push(path.display().to_string());
    Ok(())
}

/// Moments of the fault, for the report.
struct Marks {
    inject_start: Instant,
    fault: Instant,
    inject_took: Duration,
    detected: Option<Instant>,
    restored: Instant,
    healthy: Option<Instant>,
    traffic: Option<Instant>,
}

async fn measure(
    ctx: &Ctx,
    r: &mut ScenarioReport,
    mode: Mode,
    victim: &str,
    server: &str,
    t0: Instant,
) -> Result<Marks, ScenarioError> {
    let stack = &ctx.stack;
    // Baseline.
    tokio::time::sleep_until((t0 + Duration::from_secs(3)).into()).await;
    // Watch for the ejection from before the fault on.
    let watcher = {
        let ctx = ctx.clone();
        let server = server.to_owned();
        tokio::spawn(async move { wait_state(&ctx, &server, false, Duration::from_secs(40)).await })
    };
    let inject_start = Instant::now();
    let mut fault_at = None;
    match mode {
        Mode::Chaos => {
            ctx.restorer
                .push(RestoreAction::ChaosReset(victim.to_owned()))
                .await;
            fault_at = Some(Instant::now());
            stack.chaos(victim, json!({"down": true})).await?;
            r.figure("fault", format!("chaos down on {victim}"));
        }
        Mode::Kill => {
            let pid = match ctx.opts.kill_pid {
                Some(p) => p,
                None => port(victim)
                    .and_then(faults::pid_listening_on)
                    .ok_or_else(|| {
                        ScenarioError::Setup(format!(
                            "no process found listening on {victim}'s port"
                        ))
                    })?,
            };
            let spec = ProcessSpec::capture(pid)?;
            std::fs::create_dir_all(&ctx.opts.out_dir).map_err(|source| ScenarioError::Io {
                path: ctx.opts.out_dir.display().to_string(),
                source,
            })?;
            let log = ctx.opts.out_dir.join("replica-respawn.log");
            r.figure("fault", format!("kill -9 {pid} ({})", spec.render()));
            ctx.restorer.push(RestoreAction::Respawn(spec, log)).await;
            fault_at = Some(Instant::now());
            faults::kill_hard(pid).await?;
        }
        Mode::Compose => {
            let c = stack.targets.compose.clone().ok_or_else(|| {
                ScenarioError::Setup("compose mode without compose target".into())
            })?;
            let compose = Compose { file: c.file };
            ctx.restorer
                .push(RestoreAction::ComposeStart(
                    compose.clone(),
                    c.replica_service.clone(),
                ))
                .await;
            compose.stop(&c.replica_service).await?;
            r.figure(
                "fault",
                format!("docker compose stop {}", c.replica_service),
            );
        }
    }
    // The fault starts when the chaos switch or the kill is sent; for a compose stop (which
    // drains the service first) when the command returned.
    let fault = fault_at.unwrap_or_else(Instant::now);
    let inject_took = inject_start.elapsed();
    let detected = watcher.await.ok().flatten().map(|d| d.max(fault));
    // Keep the fault (and the load) a while after detection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_traffic = metric_sum_prefix(
        &stack
            .http
            .get(&format!("{victim}/metrics"))
            .await
            .map(|x| x.body)
            .unwrap_or_default(),
        "http_requests_total",
        "route",
        "/api/",
    );
    let (notes, errors) = ctx.restorer.restore_all(&stack.http).await;
    let restored = Instant::now();
    r.figure("restore", &notes);
    if !errors.is_empty() {
        return Err(ScenarioError::Setup(format!(
            "restore failed: {}",
            errors.join("; ")
        )));
    }
    let healthy = wait_state(ctx, server, true, RECOVER_BOUND).await;
    // Receiving traffic: the replica's own request counter for /api/ routes rises. A restarted
    // process starts from zero, so any positive count after the restart also counts.
    let mut traffic = None;
    if healthy.is_some() {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(x) = stack.http.get(&format!("{victim}/metrics")).await {
                let now = metric_sum_prefix(&x.body, "http_requests_total", "route", "/api/");
                let restarted = mode != Mode::Chaos;
                if (restarted && now > 0.0) || (!restarted && now > before_traffic) {
                    traffic = Some(Instant::now());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A little steady state after recovery.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Marks {
        inject_start,
        fault,
        inject_took,
        detected,
        restored,
        healthy,
        traffic,
    })
}
