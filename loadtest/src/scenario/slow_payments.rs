//! `slow-payments`: payments sleep 20 s. Passes when the reservation is answered 504
//! `payment_timeout` within the 15 s deadline (end to end through the gateway), its seat goes
//! back in stock and no money stays charged.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{check_audit, ms, post_from, Ctx, ScenarioError};
use crate::faults::RestoreAction;
use crate::report::ScenarioReport;
use crate::stack::{seat_request, EventSpec};

/// SPEC §5 deadline of `POST /api/reservations`.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// Accepted measurement margin on top of the deadline (network, gateway, scheduling).
pub const MARGIN: Duration = Duration::from_millis(1000);
/// Injected payments latency.
pub const LATENCY_MS: u64 = 20_000;

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let payments = stack.targets.payments.clone();
    let event = ctx.event_id("SLOW");
    let seats: Vec<String> = ["A1", "A2", "A3", "A4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    stack
        .create_event(
            stack.targets.primary(),
            &event,
            "loadtest slow-payments",
            &EventSpec::Seats(seats),
        )
        .await?;
    let email = format!("slow-{}-{}@loadtest.local", ctx.run_id, ctx.seed);
    ctx.restorer
        .push(RestoreAction::ChaosReset(payments.clone()))
        .await;
    stack
        .chaos(&payments, json!({"latencyMs": LATENCY_MS}))
        .await?;
    r.figure("fault", format!("payments chaos latencyMs {LATENCY_MS}"));

    let pool = ctx.pool(1, 4, Duration::from_secs(40))?;
    let sent = Instant::now();
    let res = post_from(
        pool.get(0),
        &ctx.gw("/api/reservations"),
        &seat_request(&event, "A1", &email),
        Duration::from_secs(40),
    )
    .await;
    let took = sent.elapsed();
    r.figure("answerMs", took.as_millis() as u64);
    let (status, code, body) = match &res {
        Ok(rep) => (Some(rep.status), rep.error_code(), rep.json()),
        Err(_) => (None, None, None),
    };
    r.check(
        "answer",
        "504 payment_timeout",
        match &res {
            Ok(rep) => format!(
                "{} {}",
                rep.status,
                code.clone().unwrap_or_else(|| rep.body_excerpt())
            ),
            Err(e) => e.to_string(),
        },
        status == Some(504) && code.as_deref() == Some("payment_timeout"),
    );
    r.check(
        "answered within the deadline (end to end)",
        format!(
            "≤ {} (15 s + {} ms margin)",
            ms(DEADLINE + MARGIN),
            MARGIN.as_millis()
        ),
        ms(took),
        took <= DEADLINE + MARGIN,
    );
    // Seat state right after the answer, while payments are still slow (informational).
    if let Ok(ev) = stack.event(stack.targets.primary(), &event).await {
        r.figure("seatA1AtAnswer", ev.seat("A1"));
    }
    // The reservation: id from the 504 body, else looked up by the unique e-mail.
    let mut rid = body
        .as_ref()
        .and_then(|b| b.get("reservationId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    r.figure("reservationIdInBody", rid.is_some());
    if rid.is_none() {
        let found = stack
            .reservations_by_email(stack.targets.primary(), &email)
            .await?;
        rid = found
            .first()
            .and_then(|v| v.get("reservationId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
    }

    // Lift the fault; then wait until every payment attempt started during the fault would have
    // woken (3 attempts within the 15 s deadline + 20 s sleep), so a late charge cannot hide.
    let (notes, errors) = ctx.restorer.restore_all(&stack.http).await;
    r.figure("restore", &notes);
    if !errors.is_empty() {
        return Err(ScenarioError::Setup(format!(
            "restore failed: {}",
            errors.join("; ")
        )));
    }
    let quiet_after = sent + DEADLINE + Duration::from_millis(LATENCY_MS) + Duration::from_secs(2);
    let give_up = sent + Duration::from_secs(90);
    let mut final_status = String::from("?");
    let mut payment = String::from("?");
    let mut seat: String;
    let mut settled_at = None;
    loop {
        let now = Instant::now();
        if let Some(id) = &rid {
            final_status = match stack.reservation(stack.targets.primary(), id).await {
                Ok(v) => v
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                Err(e) => e.to_string(),
            };
            payment = match stack.payment_status(id).await {
                Ok(Some(p)) => p,
                Ok(None) => "none (404)".into(),
                Err(e) => e.to_string(),
            };
        }
        seat = match stack.event(stack.targets.primary(), &event).await {
            Ok(ev) => ev.seat("A1").unwrap_or("?").to_owned(),
            Err(e) => e.to_string(),
        };
        let settled = !matches!(final_status.as_str(), "HELD" | "PAYMENT_PENDING" | "?")
            && seat == "available"
            && matches!(payment.as_str(), "refunded" | "declined" | "none (404)");
        if settled && settled_at.is_none() {
            settled_at = Some(sent.elapsed());
        }
        if !settled {
            settled_at = None;
        }
        if (settled && now >= quiet_after) || now >= give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    r.figure("reservationId", &rid);
    r.figure("settledAfterMs", settled_at.map(|d| d.as_millis() as u64));
    r.check(
        "reservation found",
        "id in the 504 body or by userEmail",
        rid.clone().unwrap_or_else(|| "not found".into()),
        rid.is_some(),
    );
    r.check(
        "reservation outcome",
        "not CONFIRMED (CANCELLED / FAILED)",
        &final_status,
        matches!(final_status.as_str(), "CANCELLED" | "FAILED" | "EXPIRED"),
    );
    r.check(
        "seat A1 back in stock",
        "available",
        &seat,
        seat == "available",
    );
    r.check(
        "net charge (after every attempt could have landed)",
        "none: refunded, declined or no payment",
        &payment,
        matches!(payment.as_str(), "refunded" | "declined" | "none (404)"),
    );
    let ev = stack.settled_event(&event, Duration::from_secs(5)).await?;
    r.figure("eventAfter", &ev);
    r.check(
        "event availability unchanged",
        "available 4 held 0 sold 0 of 4",
        ev.render(),
        ev.available == 4 && ev.held == 0 && ev.sold == 0,
    );
    check_audit(ctx, r).await;
    Ok(())
}
