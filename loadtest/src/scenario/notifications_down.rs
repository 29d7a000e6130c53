//! `notifications-down`: the notifications service is down. Passes when reservations are still
//! 201 with `notification: "queued"`, and every message is delivered once the service is back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{check_audit, ms, post_from, Ctx, ScenarioError};
use crate::faults::RestoreAction;
use crate::report::ScenarioReport;
use crate::stack::{ga_request, EventSpec};

/// Reservations made during the outage (within the gateway's per-client burst).
const RESERVATIONS: u64 = 3;
/// Delivery must complete within this after the restore.
const DELIVERY_BOUND: Duration = Duration::from_secs(30);

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let notifications = stack.targets.notifications.clone();
    let event = ctx.event_id("NOTIF");
    stack
        .create_event(
            stack.targets.primary(),
            &event,
            "loadtest notifications-down",
            &EventSpec::General(10),
        )
        .await?;
    ctx.restorer
        .push(RestoreAction::ChaosReset(notifications.clone()))
        .await;
    stack.chaos(&notifications, json!({"down": true})).await?;
    r.figure("fault", "notifications chaos down");

    let pool = ctx.pool(1, 5, Duration::from_secs(20))?;
    let mut ids = Vec::new();
    let mut answers = Vec::new();
    let mut queued = 0u64;
    for i in 0..RESERVATIONS {
        let body = ga_request(&event, &format!("notif-{i}-{}@loadtest.local", ctx.seed), 1);
        match post_from(
            pool.get(0),
            &ctx.gw("/api/reservations"),
            &body,
            Duration::from_secs(20),
        )
        .await
        {
            Ok(rep) => {
                let v = rep.json().unwrap_or(Value::Null);
                let status = v.get("status").and_then(Value::as_str).unwrap_or("?");
                let notif = v.get("notification").and_then(Value::as_str).unwrap_or("?");
                answers.push(format!("{} {status} notification={notif}", rep.status));
                if rep.status == 201 {
                    if notif == "queued" {
                        queued += 1;
                    }
                    if let Some(id) = v.get("reservationId").and_then(Value::as_str) {
                        ids.push(id.to_owned());
                    }
                } else {
                    answers.push(rep.body_excerpt());
                }
            }
            Err(e) => answers.push(e.to_string()),
        }
    }
    r.figure("answers", &answers);
    r.check(
        "reservations while notifications are down",
        format!("{RESERVATIONS} × 201 CONFIRMED"),
        answers.join("; "),
        ids.len() as u64 == RESERVATIONS
            && answers
                .iter()
                .filter(|a| a.starts_with("201 CONFIRMED"))
                .count() as u64
                == RESERVATIONS,
    );
    r.check(
        "their notification field",
        "queued",
        format!("{queued} of {RESERVATIONS} queued"),
        queued == RESERVATIONS,
    );
    // Hold the outage a moment so the outbox worker really meets a dead service.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (notes, errors) = ctx.restorer.restore_all(&stack.http).await;
    r.figure("restore", &notes);
    if !errors.is_empty() {
        return Err(ScenarioError::Setup(format!(
            "restore failed: {}",
            errors.join("; ")
        )));
    }
    let restored = Instant::now();
    let mut delivered: Vec<Option<Duration>> = vec![None; ids.len()];
    let mut copies = vec![0usize; ids.len()];
    while delivered.iter().any(Option::is_none)
        && restored.elapsed() < DELIVERY_BOUND + Duration::from_secs(15)
    {
        for (i, id) in ids.iter().enumerate() {
            if delivered[i].is_some() {
                continue;
            }
            let in_service = stack
                .notifications_for(id)
                .await
                .map(|v| v.len())
                .unwrap_or(0);
            let sent_flag = stack
                .reservation(stack.targets.primary(), id)
                .await
                .ok()
                .and_then(|v| {
                    v.get("notification")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            if in_service > 0 || sent_flag.as_deref() == Some("sent") {
                delivered[i] = Some(restored.elapsed());
                copies[i] = in_service;
            }
        }
        if delivered.iter().any(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Let duplicates (if any) show up, then count what the service holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, id) in ids.iter().enumerate() {
        if let Ok(v) = stack.notifications_for(id).await {
            copies[i] = v.len();
        }
    }
    let done = delivered.iter().filter(|d| d.is_some()).count();
    let worst = delivered.iter().flatten().max().copied();
    r.figure(
        "deliveredAfterMs",
        delivered
            .iter()
            .map(|d| d.map(|d| d.as_millis() as u64))
            .collect::<Vec<_>>(),
    );
    r.figure("copiesPerReservation", &copies);
    r.check(
        "messages delivered after recovery",
        format!(
            "{} of {} within {} s",
            ids.len(),
            ids.len(),
            DELIVERY_BOUND.as_secs()
        ),
        format!(
            "{done} of {}{}",
            ids.len(),
            worst
                .map(|w| format!(", last after {}", ms(w)))
                .unwrap_or_default()
        ),
        !ids.is_empty() && done == ids.len() && worst.is_some_and(|w| w <= DELIVERY_BOUND),
    );
    let mut states = Vec::new();
    for id in &ids {
        states.push(
            stack
                .reservation(stack.targets.primary(), id)
                .await
                .ok()
                .and_then(|v| {
                    v.get("notification")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "?".into()),
        );
    }
    r.figure("notificationStates", &states);
    r.check(
        "reservations' notification field after delivery",
        "sent",
        states.join(", "),
        !states.is_empty() && states.iter().all(|s| s == "sent"),
    );
    check_audit(ctx, r).await;
    Ok(())
}
