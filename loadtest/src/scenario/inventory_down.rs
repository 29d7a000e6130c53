//! `inventory-down`: the inventory store becomes unreachable (chaos `inventoryDown` on every
//! replica, or `docker compose stop redis`). Passes when writes get 503 `inventory_unavailable`
//! with `Retry-After` fast, reads are served stale, and writes succeed again after the restore.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{check_audit, get_from, ms, post_from, Ctx, ScenarioError};
use crate::faults::{Compose, RestoreAction};
use crate::http::Reply;
use crate::report::ScenarioReport;
use crate::stack::{ga_request, EventSpec};
use crate::stats::Latencies;

/// Requests per replica whose latency is not counted (the store's breaker may need a few
/// failures to open).
const WARMUP: usize = 5;
/// Write probes per replica during the outage.
const PROBES: usize = 25;

/// Whether a read answer says it is stale (header or any `stale: true` in the body).
pub fn is_stale(rep: &Reply) -> bool {
    if rep
        .header("x-data-stale")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return true;
    }
    fn any_stale(v: &Value) -> bool {
        match v {
            Value::Object(o) => {
                o.get("stale").and_then(Value::as_bool) == Some(true) || o.values().any(any_stale)
            }
            Value::Array(a) => a.iter().any(any_stale),
            _ => false,
        }
    }
    rep.json().is_some_and(|v| any_stale(&v))
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let replicas = stack.targets.reservations.clone();
    let event = ctx.event_id("INV");
    stack
        .create_event(
            stack.targets.primary(),
            &event,
            "loadtest inventory-down",
            &EventSpec::General(200),
        )
        .await?;
    // Warm every replica's read cache (and the gateway path).
    for rep in &replicas {
        stack.http.get_json(&format!("{rep}/api/events")).await?;
    }
    let pool = ctx.pool(4, 3, Duration::from_secs(20))?;
    let gw_events = ctx.gw("/api/events");
    get_from(pool.get(0), &gw_events, Duration::from_secs(10)).await?;

    // Inject.
    let method = if let Some(c) = &stack.targets.compose {
        let compose = Compose {
            file: c.file.clone(),
        };
        ctx.restorer
            .push(RestoreAction::ComposeStart(
                compose.clone(),
                c.redis_service.clone(),
            ))
            .await;
        compose.stop(&c.redis_service).await?;
        format!("docker compose stop {}", c.redis_service)
    } else {
        for rep in &replicas {
            ctx.restorer
                .push(RestoreAction::ChaosReset(rep.clone()))
                .await;
            stack.chaos(rep, json!({"inventoryDown": true})).await?;
        }
        "chaos inventoryDown on every replica".to_owned()
    };
    r.figure("fault", &method);

    // Writes, directly at each replica.
    let mut lat_fast = Latencies::new();
    let mut lat_all = Latencies::new();
    let mut writes = 0u64;
    let mut good = 0u64;
    let mut with_retry = 0u64;
    let mut bad = Vec::new();
    let direct = pool.get(1);
    for rep in &replicas {
        let url = format!("{rep}/api/reservations");
        for i in 0..PROBES {
            let body = ga_request(&event, &format!("inv-{i}@loadtest.local"), 1);
            let started = Instant::now();
            let res = post_from(direct, &url, &body, Duration::from_secs(20)).await;
            let took = started.elapsed();
            writes += 1;
            lat_all.record(took);
            if i >= WARMUP {
                lat_fast.record(took);
            }
            match res {
                Ok(rep)
                    if rep.status == 503
                        && rep.error_code().as_deref() == Some("inventory_unavailable") =>
                {
                    good += 1;
                    if rep.retry_after().is_some_and(|s| s >= 1) {
                        with_retry += 1;
                    }
                }
                Ok(rep) => {
                    if bad.len() < 3 {
                        bad.push(format!("{} {}", rep.status, rep.body_excerpt()));
                    }
                }
                Err(e) => {
                    if bad.len() < 3 {
                        bad.push(e.to_string());
                    }
                }
            }
        }
    }
    // Writes through the gateway (the 503 must pass through untouched).
    let mut gw_good = 0u64;
    let gw_writes = 3u64;
    for i in 0..gw_writes {
        let body = ga_request(&event, &format!("inv-gw-{i}@loadtest.local"), 1);
        match post_from(
            pool.get(2),
            &ctx.gw("/api/reservations"),
            &body,
            Duration::from_secs(20),
        )
        .await
        {
            Ok(rep)
                if rep.status == 503
                    && rep.error_code().as_deref() == Some("inventory_unavailable")
                    && rep.retry_after().is_some() =>
            {
                gw_good += 1
            }
            Ok(rep) => {
                if bad.len() < 5 {
                    bad.push(format!(
                        "via gateway: {} {}",
                        rep.status,
                        rep.body_excerpt()
                    ));
                }
            }
            Err(e) => bad.push(format!("via gateway: {e}")),
        }
    }
    r.check(
        "writes during the outage",
        "503 inventory_unavailable",
        if bad.is_empty() {
            format!("{} of {}", good + gw_good, writes + gw_writes)
        } else {
            format!(
                "{} of {} — e.g. {}",
                good + gw_good,
                writes + gw_writes,
                bad.join(" | ")
            )
        },
        good == writes && gw_good == gw_writes,
    );
    r.check(
        "Retry-After on those 503s",
        "present, ≥ 1 s",
        format!("{with_retry} of {good} direct, {gw_good} of {gw_writes} via gateway"),
        with_retry == good && good > 0,
    );
    let fast = lat_fast.summary();
    r.figure("writeLatencyAfterWarmup", fast);
    r.figure("writeLatencyAll", lat_all.summary());
    r.check(
        "fail-fast write latency p95 (direct, after warm-up)",
        "< 50 ms",
        format!(
            "p95 {:.1} ms (p50 {:.1}, max {:.1})",
            fast.p95_ms, fast.p50_ms, fast.max_ms
        ),
        fast.count > 0 && fast.p95_ms < 50.0,
    );

    // Reads: stale but served.
    let mut reads = 0u64;
    let mut stale_ok = 0u64;
    let mut read_notes = Vec::new();
    let read_urls: Vec<(String, &crate::sources::Source)> = replicas
        .iter()
        .map(|rep| (format!("{rep}/api/events"), pool.get(1)))
        .chain((0..3).map(|_| (gw_events.clone(), pool.get(3))))
        .collect();
    for (url, src) in &read_urls {
        reads += 1;
        match get_from(src, url, Duration::from_secs(10)).await {
            Ok(rep) if rep.status == 200 && is_stale(&rep) => stale_ok += 1,
            Ok(rep) => {
                if read_notes.len() < 3 {
                    read_notes.push(format!(
                        "{url}: {} stale-header {:?} {}",
                        rep.status,
                        rep.header("x-data-stale"),
                        rep.body_excerpt()
                    ));
                }
            }
            Err(e) => read_notes.push(e.to_string()),
        }
    }
    r.check(
        "reads during the outage",
        "200 with stale: true / X-Data-Stale: true",
        if read_notes.is_empty() {
            format!("{stale_ok} of {reads}")
        } else {
            format!("{stale_ok} of {reads} — {}", read_notes.join(" | "))
        },
        stale_ok == reads,
    );
    // The gateway must not count the backend's deliberate 503s as failures.
    if let Ok(st) = stack.gateway_status().await {
        let breaker = st
            .get("upstreams")
            .and_then(|u| u.get("reservations"))
            .and_then(|u| u.get("breaker"))
            .map(|b| match b {
                Value::String(s) => s.clone(),
                other => other
                    .get("state")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| other.to_string()),
            })
            .unwrap_or_else(|| "absent".into());
        r.check(
            "gateway breaker for reservations",
            "closed (503s are not failures)",
            &breaker,
            breaker.eq_ignore_ascii_case("closed"),
        );
    }

    // Restore and time the recovery.
    let (notes, errors) = ctx.restorer.restore_all(&stack.http).await;
    r.figure("restore", &notes);
    if !errors.is_empty() {
        return Err(ScenarioError::Setup(format!(
            "restore failed: {}",
            errors.join("; ")
        )));
    }
    let restored = Instant::now();
    let mut recovered: Vec<Option<Duration>> = vec![None; replicas.len()];
    let mut confirmed = 0u64;
    let mut last = String::new();
    let mut attempt = 0u64;
    while recovered.iter().any(Option::is_none) && restored.elapsed() < Duration::from_secs(60) {
        for (i, rep) in replicas.iter().enumerate() {
            if recovered[i].is_some() {
                continue;
            }
            attempt += 1;
            let body = ga_request(&event, &format!("inv-after-{attempt}@loadtest.local"), 1);
            match post_from(
                direct,
                &format!("{rep}/api/reservations"),
                &body,
                Duration::from_secs(20),
            )
            .await
            {
                Ok(x) if x.status == 201 => {
                    confirmed += 1;
                    recovered[i] = Some(restored.elapsed());
                }
                Ok(x) => last = format!("{rep}: {} {}", x.status, x.body_excerpt()),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let worst = recovered.iter().flatten().max().copied();
    r.figure(
        "timeToRecoverMs",
        recovered
            .iter()
            .map(|d| d.map(|d| d.as_millis() as u64))
            .collect::<Vec<_>>(),
    );
    r.check(
        "writes succeed again after restore (every replica)",
        "within 30 s",
        match worst {
            Some(w) if recovered.iter().all(Option::is_some) => format!("after {}", ms(w)),
            _ => format!("not within 60 s; last: {last}"),
        },
        recovered.iter().all(Option::is_some) && worst.is_some_and(|w| w < Duration::from_secs(30)),
    );
    let ev = stack.settled_event(&event, Duration::from_secs(10)).await?;
    r.figure("eventAfter", &ev);
    r.check(
        "event after recovery",
        format!("sold {confirmed} (only the post-restore writes), balanced"),
        ev.render(),
        ev.sold == confirmed && ev.held == 0 && ev.balanced(),
    );
    check_audit(ctx, r).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(headers: &[(&'static str, &'static str)], body: &str) -> Reply {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, reqwest::header::HeaderValue::from_static(v));
        }
        Reply {
            status: 200,
            latency: Duration::ZERO,
            headers: h,
            body: body.into(),
        }
    }

    #[test]
    fn staleness_from_header_or_body() {
        assert!(is_stale(&reply(&[("x-data-stale", "true")], "[]")));
        assert!(is_stale(&reply(&[], r#"[{"eventId":"E","stale":true}]"#)));
        assert!(is_stale(&reply(&[], r#"{"events":[],"stale":true}"#)));
        assert!(!is_stale(&reply(&[], r#"[{"eventId":"E","stale":false}]"#)));
        assert!(!is_stale(&reply(&[("x-data-stale", "false")], "[]")));
    }
}
