//! The demos of SPEC §9. Each scenario sets up its own event, injects one fault, measures, and
//! always restores; the runner adds a failed check when restoring failed.

pub mod cluster_flood;
pub mod flood;
pub mod inventory_down;
pub mod notifications_down;
pub mod race;
pub mod replica_down;
pub mod shard_failover;
pub mod slow_payments;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::Value;

use crate::faults::{FaultError, Restorer};
use crate::http::{self, HttpError, Reply};
use crate::limit_req::ZoneLimit;
use crate::report::ScenarioReport;
use crate::sources::{Source, SourcePool};
use crate::stack::{metric_sum, Stack};

/// What stopped a scenario before it could finish measuring.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A setup or measuring call failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A fault could not be injected.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// A Redis Cluster node could not be reached, stopped or started.
    #[error(transparent)]
    Nodes(#[from] crate::redis_nodes::NodesError),
    /// Writing a chart or log failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The stack is not in a state the scenario can start from.
    #[error("{0}")]
    Setup(String),
    /// Ctrl-C.
    #[error("interrupted (Ctrl-C); faults were restored")]
    Interrupted,
}

/// Scenario names (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Name {
    /// Many concurrent buyers for one last seat.
    Race,
    /// A burst far above the zone's rate.
    Flood,
    /// The inventory store unreachable.
    InventoryDown,
    /// Payments sleep 20 s.
    SlowPayments,
    /// Notifications down.
    NotificationsDown,
    /// One reservations replica down.
    ReplicaDown,
    /// All of the above (not the two scaled-stack scenarios below).
    All,
    /// The scaled stack: one client floods every gateway at once (SPEC §10.3).
    ClusterFlood,
    /// The scaled stack: the Redis master of an event's slot stops mid-flood (SPEC §10.3).
    ShardFailover,
}

impl Name {
    /// The order `all` runs in: the flood last, because on a stack where every request comes
    /// from one address (compose) it leaves that address's limiter full.
    pub const ORDER: [Name; 6] = [
        Name::Race,
        Name::NotificationsDown,
        Name::SlowPayments,
        Name::InventoryDown,
        Name::ReplicaDown,
        Name::Flood,
    ];

    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Race => "race",
            Name::Flood => "flood",
            Name::InventoryDown => "inventory-down",
            Name::SlowPayments => "slow-payments",
            Name::NotificationsDown => "notifications-down",
            Name::ReplicaDown => "replica-down",
            Name::All => "all",
            Name::ClusterFlood => "cluster-flood",
            Name::ShardFailover => "shard-failover",
        }
    }
}

/// Tuning knobs of the scenarios (defaults suit the local stack).
#[derive(Debug, Clone)]
pub struct Options {
    /// `race`: concurrent buyers.
    pub buyers: u64,
    /// `flood`: offered request rate.
    pub flood_rate: f64,
    /// `flood`: how long to flood.
    pub flood_duration: Duration,
    /// `flood`: explicit limits (`--limit zone=rate:burst`), replacing discovery.
    pub limits: Option<Vec<ZoneLimit>>,
    /// `replica-down`: concurrent readers.
    pub read_clients: usize,
    /// `replica-down`: offered read rate.
    pub read_rate: f64,
    /// `replica-down`: kill this pid instead of using chaos (then restart it).
    pub kill_pid: Option<u32>,
    /// `replica-down`: kill whatever listens on the second replica's port (then restart it).
    pub kill: bool,
    /// `shard-failover`: offered reservation rate.
    pub failover_rate: f64,
    /// Where charts and logs go.
    pub out_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            buyers: 500,
            flood_rate: 200.0,
            flood_duration: Duration::from_secs(5),
            limits: None,
            read_clients: 8,
            read_rate: 100.0,
            kill_pid: None,
            kill: false,
            failover_rate: 40.0,
            out_dir: PathBuf::from("loadtest-out"),
        }
    }
}

/// Everything a scenario works with.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The stack.
    pub stack: Stack,
    /// Undo list.
    pub restorer: Restorer,
    /// Knobs.
    pub opts: Options,
    /// Differs per run and scenario: fresh limiter keys and unique ids.
    pub seed: u16,
    /// Unix seconds at start (in event ids).
    pub run_id: u64,
}

impl Ctx {
    /// A unique event id, e.g. `LT-RACE-1764000000-1234`.
    pub fn event_id(&self, tag: &str) -> String {
        format!("LT-{tag}-{}-{}", self.run_id, self.seed)
    }

    /// A pool of `n` virtual clients with fresh addresses (offset `block` keeps pools of one
    /// scenario apart).
    pub fn pool(&self, n: usize, block: u16, timeout: Duration) -> Result<SourcePool, HttpError> {
        SourcePool::new(
            n,
            self.stack.targets.distinct_sources,
            self.seed.wrapping_add(block.wrapping_mul(7919)),
            timeout,
        )
    }

    /// The gateway URL of a path.
    pub fn gw(&self, path: &str) -> String {
        format!("{}{path}", self.stack.targets.gateway)
    }

    /// Whether faults are real compose operations.
    pub fn compose(&self) -> bool {
        self.stack.targets.compose.is_some()
    }
}

/// `POST {url}` with a JSON body from a virtual client.
pub async fn post_from(
    src: &Source,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    http::send(
        &src.client,
        reqwest::Method::POST,
        url,
        Some(body),
        &src.headers(),
        Some(timeout),
    )
    .await
}

/// `GET {url}` from a virtual client.
pub async fn get_from(src: &Source, url: &str, timeout: Duration) -> Result<Reply, HttpError> {
    http::send(
        &src.client,
        reqwest::Method::GET,
        url,
        None,
        &src.headers(),
        Some(timeout),
    )
    .await
}

/// How long a scenario waits for the gateways' counters to catch up with the answers it got.
const METRICS_SETTLE: Duration = Duration::from_secs(2);

/// Every gateway's `/metrics` text, in the order of `admins` (`None` where it could not be read).
pub async fn scrape_gateways(stack: &Stack, admins: &[String]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(admins.len());
    for a in admins {
        out.push(stack.gateway_metrics_at(a).await.ok());
    }
    out
}

/// Sum over every gateway of a metric's increase between two [`scrape_gateways`] (`None` when a
/// gateway's metrics could not be read).
pub fn metric_delta(
    before: &[Option<String>],
    after: &[Option<String>],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let mut sum = 0.0;
    for (b, a) in before.iter().zip(after) {
        let (b, a) = (b.as_deref()?, a.as_deref()?);
        sum +=
            metric_sum(a, name, labels).unwrap_or(0.0) - metric_sum(b, name, labels).unwrap_or(0.0);
    }
    Some(sum)
}

/// [`scrape_gateways`] after a flood, repeated until `gateway_ratelimit_rejected_total` summed
/// over the gateways has grown by `rejected` since `before`, or [`METRICS_SETTLE`] has passed. A
/// gateway counts a request in Pingora's logging hook, which runs just after the answer was
/// written, so a scrape right after the last answer can come a moment too early for it.
pub async fn settled_metrics(
    stack: &Stack,
    admins: &[String],
    before: &[Option<String>],
    rejected: u64,
) -> Vec<Option<String>> {
    let name = "gateway_ratelimit_rejected_total";
    let deadline = Instant::now() + METRICS_SETTLE;
    loop {
        let after = scrape_gateways(stack, admins).await;
        let grown =
            metric_delta(before, &after, name, &[]).is_some_and(|d| d >= rejected as f64 - 0.5);
        if grown || Instant::now() >= deadline {
            return after;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds the audit check (`GET /admin/audit` on the primary replica says ok).
pub async fn check_audit(ctx: &Ctx, r: &mut ScenarioReport) {
    match ctx.stack.audit(ctx.stack.targets.primary()).await {
        Ok(a) => {
            r.figure("audit", &a);
            r.check("audit (no oversell, §5 invariants)", "ok", a.render(), a.ok);
        }
        Err(e) => r.check(
            "audit (no oversell, §5 invariants)",
            "ok",
            format!("audit unreachable: {e}"),
            false,
        ),
    }
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs one scenario (or all) and returns a report per scenario run.
pub async fn run(name: Name, ctx: &Ctx) -> Vec<ScenarioReport> {
    let names: Vec<Name> = if name == Name::All {
        Name::ORDER.to_vec()
    } else {
        vec![name]
    };
    let mut out = Vec::new();
    for (i, n) in names.into_iter().enumerate() {
        let mut c = ctx.clone();
        c.seed = ctx.seed.wrapping_add(i as u16 * 101);
        c.restorer = Restorer::new();
        if i > 0 && (ctx.compose() || !ctx.stack.targets.distinct_sources) {
            // Every scenario's gateway traffic shares one limiter key: let the previous one's
            // burst drain so the next starts from a clean key.
            let (limits, _) = flood::discover_limits(&c).await;
            let drain = flood::drain_time(&limits);
            eprintln!(
                "[loadtest] one client address for the gateway: waiting {:.1} s for its limiter to drain",
                drain.as_secs_f64()
            );
            tokio::time::sleep(drain).await;
        }
        let report = run_one(n, &c).await;
        eprintln!(
            "[loadtest] {} {} in {:.1} s",
            n.as_str(),
            if report.passed() { "PASSED" } else { "FAILED" },
            report.duration_ms as f64 / 1000.0
        );
        let interrupted = report
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("interrupted"));
        out.push(report);
        if interrupted {
            break;
        }
    }
    out
}

async fn run_one(name: Name, ctx: &Ctx) -> ScenarioReport {
    let started = Instant::now();
    let mut r = ScenarioReport::new(name.as_str());
    eprintln!("[loadtest] {} ...", name.as_str());
    let outcome = {
        let fut = async {
            match name {
                Name::Race => race::run(ctx, &mut r).await,
                Name::Flood => flood::run(ctx, &mut r).await,
                Name::InventoryDown => inventory_down::run(ctx, &mut r).await,
                Name::SlowPayments => slow_payments::run(ctx, &mut r).await,
                Name::NotificationsDown => notifications_down::run(ctx, &mut r).await,
                Name::ReplicaDown => replica_down::run(ctx, &mut r).await,
                Name::ClusterFlood => cluster_flood::run(ctx, &mut r).await,
                Name::ShardFailover => shard_failover::run(ctx, &mut r).await,
                Name::All => Err(ScenarioError::Setup(
                    "`all` is not a single scenario".into(),
                )),
            }
        };
        tokio::select! {
            res = fut => res,
            _ = tokio::signal::ctrl_c() => Err(ScenarioError::Interrupted),
        }
    };
    if let Err(e) = outcome {
        r.error = Some(e.to_string());
    }
    let (notes, errors) = ctx.restorer.restore_all(&ctx.stack.http).await;
    if !notes.is_empty() {
        r.figure("restoredAtEnd", &notes);
    }
    if !errors.is_empty() {
        r.check(
            "fault restored",
            "restore succeeds",
            errors.join("; "),
            false,
        );
    }
    r.duration_ms = started.elapsed().as_millis() as u64;
    r
}
