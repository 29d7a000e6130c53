//! `loadtest`: scenarios with verdict tables (SPEC §9) and benchmarks against the running stack.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use loadtest::bench::{self, ReservationsBench};
use loadtest::duration::parse_duration;
use loadtest::faults::Restorer;
use loadtest::limit_req::{parse_limit_flag, ZoneLimit};
use loadtest::report::{json_report, render_table};
use loadtest::scenario::{self, Ctx, Name, Options};
use loadtest::sources::run_seed;
use loadtest::stack::{unix_now, Stack};
use loadtest::targets::{TargetOverrides, Targets};

/// Load scenarios, demos and benchmarks for the seat-reservation gateway stack.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a demo scenario against a running stack and print a verdict table
    /// (exit status 1 when any check fails).
    Scenario(ScenarioArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// Gateway proxy URL [default: http://127.0.0.1:8080, or http://127.0.0.1:80 with --compose].
    /// Repeatable (or comma-separated) for the cluster scenarios, which spread over every
    /// gateway given [default: :8080, :8081, :8082; with --cluster :80, :8081, :8082]; the others
    /// use the first.
    #[arg(long, env = "LOADTEST_GATEWAY", value_delimiter = ',')]
    gateway: Vec<String>,
    /// Gateway admin URL, repeatable in the order of --gateway
    /// [default: http://127.0.0.1:9901, then :9902, :9903 for the cluster scenarios].
    #[arg(long, env = "LOADTEST_ADMIN", value_delimiter = ',')]
    admin: Vec<String>,
    /// shard-failover without --cluster: the local Redis Cluster nodes as host:port, repeatable
    /// [default: 127.0.0.1:7000 .. 127.0.0.1:7005, as scripts/run-local.sh --cluster starts them].
    #[arg(
        long = "redis-node",
        env = "LOADTEST_REDIS_NODES",
        value_delimiter = ','
    )]
    redis_nodes: Vec<String>,
    /// Target the scaled compose stack (docker-compose.cluster.yml, SPEC §10.3): three gateways
    /// on :80, :8081, :8082 (admin :9901-9903), real `docker compose stop/start` of Redis nodes.
    #[arg(long)]
    cluster: bool,
    /// Reservations replicas, comma-separated; the second is the one `replica-down` takes down
    /// [default: http://127.0.0.1:3001,http://127.0.0.1:3011].
    #[arg(long, env = "LOADTEST_RESERVATIONS", value_delimiter = ',')]
    reservations: Option<Vec<String>>,
    /// Payments URL [default: http://127.0.0.1:3002].
    #[arg(long, env = "LOADTEST_PAYMENTS")]
    payments: Option<String>,
    /// Notifications URL [default: http://127.0.0.1:3003].
    #[arg(long, env = "LOADTEST_NOTIFICATIONS")]
    notifications: Option<String>,
    /// Target the docker compose stack: gateway on port 80, and real `docker compose stop/start`
    /// for replica-down (reservations-2) and inventory-down (redis).
    #[arg(long)]
    compose: bool,
    /// Compose file for --compose (default: the one of the current directory).
    #[arg(long)]
    compose_file: Option<PathBuf>,
    /// Send every request from the default source address (by default each virtual client binds
    /// its own 127.x.y.z address so the gateway's per-client limits see distinct clients).
    #[arg(long)]
    same_source: bool,
}

impl TargetArgs {
    fn targets(self) -> Targets {
        Targets::resolve(TargetOverrides {
            gateways: self.gateway,
            admins: self.admin,
            redis_nodes: self.redis_nodes,
            cluster: self.cluster,
            reservations: self.reservations,
            payments: self.payments,
            notifications: self.notifications,
            compose: self.compose,
            compose_file: self.compose_file,
            same_source: self.same_source,
        })
    }
}

#[derive(Debug, Args)]
struct ScenarioArgs {
    /// Which scenario.
    #[arg(value_enum)]
    name: Name,
    #[command(flatten)]
    targets: TargetArgs,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for charts (flood.svg, replica-down.svg) and logs.
    #[arg(long, default_value = "loadtest-out")]
    out_dir: PathBuf,
    /// race: concurrent buyers for the last seat.
    #[arg(long, default_value_t = 500)]
    buyers: u64,
    /// flood: offered rate (requests/s) from one client.
    #[arg(long, default_value_t = 200.0)]
    flood_rate: f64,
    /// flood: how long to flood (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    flood_duration: Duration,
    /// flood: the route's limits as zone=RATE:BURST (repeatable), instead of reading them from
    /// the gateway's config (path from /status) or the shipped defaults.
    #[arg(long = "limit", value_parser = parse_limit_flag)]
    limits: Vec<ZoneLimit>,
    /// replica-down: concurrent readers.
    #[arg(long, default_value_t = 8)]
    read_clients: usize,
    /// replica-down: offered read rate (requests/s), spread over 200 client addresses.
    #[arg(long, default_value_t = 100.0)]
    read_rate: f64,
    /// replica-down: kill -9 the process listening on the second replica's port and restart it
    /// afterwards with the same command line (instead of chaos `down`).
    #[arg(long)]
    kill: bool,
    /// shard-failover: offered reservation rate (requests/s), spread over 200 client addresses
    /// and every gateway.
    #[arg(long, default_value_t = 40.0)]
    failover_rate: f64,
    /// replica-down: kill -9 this pid (and restart it afterwards with the same command line).
    #[arg(long)]
    kill_pid: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// POST /api/reservations (GA, quantity 1, distinct userEmail) straight at one
    /// reservations process; HDR latency histogram, throughput and the zero-oversell check.
    Reservations {
        /// Reservations process.
        #[arg(long, default_value = "http://127.0.0.1:3001")]
        target: String,
        /// Payments service whose chaos is reset first (instant charges).
        #[arg(long, default_value = "http://127.0.0.1:3002")]
        payments: String,
        /// Closed-loop workers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Run time.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Event id (created afresh; default BENCH-GA-<unix>). Repeat it to spread the workers
        /// over several events (e.g. one per Redis Cluster shard).
        #[arg(long)]
        event: Vec<String>,
        /// Event capacity; large so the run does not sell out.
        #[arg(long, default_value_t = 1_000_000)]
        capacity: u64,
        /// Write the result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// GET flood at one URL (e.g. the gateway's /health, or through nginx) for comparisons.
    Gateway {
        /// Base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Path requested.
        #[arg(long, default_value = "/health")]
        path: String,
        /// Closed-loop workers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Run time.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Write the result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn write_json(path: &PathBuf, v: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

async fn scenario(a: ScenarioArgs) -> anyhow::Result<bool> {
    let targets = a.targets.targets();
    let stack = Stack::new(targets.clone())?;
    let ctx = Ctx {
        stack,
        restorer: Restorer::new(),
        opts: Options {
            buyers: a.buyers,
            flood_rate: a.flood_rate,
            flood_duration: a.flood_duration,
            limits: (!a.limits.is_empty()).then_some(a.limits),
            read_clients: a.read_clients,
            read_rate: a.read_rate,
            kill_pid: a.kill_pid,
            kill: a.kill,
            failover_rate: a.failover_rate,
            out_dir: a.out_dir,
        },
        seed: run_seed(),
        run_id: unix_now(),
    };
    let started_at = chrono::Utc::now().to_rfc3339();
    let reports = scenario::run(a.name, &ctx).await;
    println!("\n{}", render_table(&reports));
    for r in &reports {
        for f in &r.artifacts {
            println!("chart: {f}");
        }
    }
    if let Some(path) = &a.json {
        write_json(path, &json_report(&reports, &targets, &started_at))?;
        println!("json: {}", path.display());
    }
    Ok(!reports.is_empty() && reports.iter().all(|r| r.passed()))
}

async fn bench_cmd(b: BenchCommand) -> anyhow::Result<bool> {
    match b {
        BenchCommand::Reservations {
            target,
            payments,
            concurrency,
            duration,
            event,
            capacity,
            json,
        } => {
            let target = target.trim_end_matches('/').to_owned();
            let stack = Stack::new(Targets::resolve(TargetOverrides {
                reservations: Some(vec![target.clone()]),
                payments: Some(payments.clone()),
                ..Default::default()
            }))?;
            let spec = ReservationsBench {
                target,
                payments: Some(payments),
                concurrency: concurrency.clamp(1, 4096),
                duration,
                events: if event.is_empty() {
                    vec![format!("BENCH-GA-{}", unix_now())]
                } else {
                    event
                },
                capacity: capacity.max(1),
            };
            eprintln!(
                "[loadtest] bench reservations: {} workers for {:.0} s on event {} (capacity {})",
                spec.concurrency,
                duration.as_secs_f64(),
                spec.events.join(", "),
                spec.capacity
            );
            let res = bench::reservations(&stack, &spec).await?;
            print!("{}", res.render());
            if let Some(p) = json {
                write_json(&p, &serde_json::to_value(&res)?)?;
            }
            Ok(res.zero_oversell == Some(true))
        }
        BenchCommand::Gateway {
            target,
            path,
            concurrency,
            duration,
            json,
        } => {
            let url = format!("{}{path}", target.trim_end_matches('/'));
            let res = bench::get_flood(&url, concurrency.clamp(1, 4096), duration).await?;
            print!("{}", res.render());
            if let Some(p) = json {
                write_json(&p, &serde_json::to_value(&res)?)?;
            }
            Ok(res.status_counts.errors() == 0)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Scenario(a) => scenario(a).await,
            Command::Bench(b) => bench_cmd(b).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
