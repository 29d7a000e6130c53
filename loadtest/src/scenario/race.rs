//! `race`: many concurrent buyers for the last seat of an event, through the gateway.
//! Passes when exactly one gets 201, every other gets 409 (or 429 / 503 `upstream_overloaded`
//! from the gateway), the seat is sold once and the audit is clean.

use std::time::Duration;

use serde_json::Value;

use super::{check_audit, post_from, Ctx, ScenarioError};
use crate::load;
use crate::report::ScenarioReport;
use crate::stack::{seat_request, EventSpec};
use crate::stats::Latencies;

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let primary = stack.targets.primary().to_owned();
    let event = ctx.event_id("RACE");
    let seats: Vec<String> = ["A1", "A2", "A3"].iter().map(|s| s.to_string()).collect();
    stack
        .create_event(&primary, &event, "loadtest race", &EventSpec::Seats(seats))
        .await?;
    // Sell all but the last seat, directly at the replica.
    for seat in ["A1", "A2"] {
        let body = seat_request(&event, seat, &format!("early-{seat}@loadtest.local"));
        let reply = stack
            .http
            .post(&format!("{primary}/api/reservations"), &body)
            .await?;
        if reply.status != 201 {
            return Err(ScenarioError::Setup(format!(
                "pre-selling {seat} of {event} at {primary}: expected 201, got {} {}",
                reply.status,
                reply.body_excerpt()
            )));
        }
    }
    let buyers = ctx.opts.buyers.clamp(2, 5000);
    let pool = ctx.pool(buyers as usize, 1, Duration::from_secs(30))?;
    r.figure("event", &event);
    r.figure("buyers", buyers);
    r.figure("distinctSourceAddresses", pool.distinct());
    let url = ctx.gw("/api/reservations");
    let pool = std::sync::Arc::new(pool);
    let samples = load::all_at_once(buyers, |i| {
        let pool = pool.clone();
        let url = url.clone();
        let body = seat_request(&event, "A3", &format!("buyer-{i}@loadtest.local"));
        async move { post_from(pool.get(i as usize), &url, &body, Duration::from_secs(30)).await }
    })
    .await;

    let counts = load::counts(&samples);
    let mut lat = Latencies::new();
    let mut unexpected = Vec::new();
    let mut winner: Option<Value> = None;
    for s in &samples {
        lat.record(s.latency);
        let code = s.code().unwrap_or_default();
        match (s.status(), code.as_str()) {
            (Some(201), _) => {
                winner = s.reply.as_ref().and_then(|r| r.json());
            }
            (Some(409), "seat_unavailable" | "sold_out") => {}
            (Some(429), "rate_limited") => {}
            (Some(503), "upstream_overloaded") => {}
            (status, _) => {
                if unexpected.len() < 5 {
                    unexpected.push(match (&s.reply, &s.error) {
                        (Some(rep), _) => format!("{} {}", rep.status, rep.body_excerpt()),
                        (None, Some(e)) => e.clone(),
                        (None, None) => format!("{status:?}"),
                    });
                }
            }
        }
    }
    let others_ok = counts.total() - counts.get(201)
        == counts.get(409) + counts.get(429) + counts.get(503)
        && unexpected.is_empty();
    r.figure("statusCounts", &counts);
    r.figure("latency", lat.summary());
    r.check(
        "201 responses",
        "exactly 1",
        counts.get(201).to_string(),
        counts.get(201) == 1,
    );
    r.check(
        "other responses",
        "409 seat_unavailable, or 429/503 shed by the gateway",
        if unexpected.is_empty() {
            counts.render()
        } else {
            format!(
                "{} — unexpected: {}",
                counts.render(),
                unexpected.join(" | ")
            )
        },
        others_ok,
    );
    r.check(
        "buyers that reached the inventory and lost",
        "at least 1 (409)",
        counts.get(409).to_string(),
        counts.get(409) >= 1,
    );
    if let Some(w) = &winner {
        let status = w.get("status").and_then(Value::as_str).unwrap_or("?");
        r.check(
            "winner's reservation",
            "CONFIRMED",
            status,
            status == "CONFIRMED",
        );
        if let Some(rid) = w.get("reservationId").and_then(Value::as_str) {
            r.figure("winner", rid);
            match stack.payment_status(rid).await {
                Ok(p) => {
                    let p = p.unwrap_or_else(|| "none (404)".into());
                    r.check("winner's payment", "charged", &p, p == "charged");
                }
                Err(e) => r.check("winner's payment", "charged", e.to_string(), false),
            }
        }
    }
    let ev = stack.settled_event(&event, Duration::from_secs(10)).await?;
    r.figure("eventAfter", &ev);
    let sold_ok =
        ev.sold == 3 && ev.available == 0 && ev.held == 0 && ev.seat("A3") == Some("sold");
    r.check(
        "event after the race",
        "sold 3 of 3, A3 sold, held 0",
        format!("{}, A3 {}", ev.render(), ev.seat("A3").unwrap_or("?")),
        sold_ok,
    );
    check_audit(ctx, r).await;
    Ok(())
}
