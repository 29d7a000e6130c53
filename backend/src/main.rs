//! `backend`: the reservations, payments and notifications services (one binary, subcommands).

use clap::{Parser, Subcommand};

use backend::reservations::{self, ReservationsArgs};

/// jemalloc instead of glibc malloc: the reservation path allocates many small, short-lived
/// buffers (JSON, Redis arguments, HTTP headers); perf showed a quarter of the reservations
/// process's CPU in glibc's malloc/free (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Ticket-reservation backend services.
#[derive(Debug, Parser)]
#[command(name = "backend", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reservations API: seat inventory on Redis Lua scripts and the reservation saga.
    Reservations(Box<ReservationsArgs>),
    /// Payments service (idempotent charges, refunds).
    Payments(backend::payments::PaymentsArgs),
    /// Notifications service (records deliveries from the outbox).
    Notifications(backend::notifications::NotificationsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    backend::telemetry::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Reservations(args) => reservations::run(*args).await,
            Command::Payments(args) => backend::payments::run(args).await,
            Command::Notifications(args) => backend::notifications::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_unique_flags() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["backend", "reservations", "--hold-ttl-ms", "1500"]);
        match cli.command {
            Command::Reservations(args) => assert_eq!(args.hold_ttl_ms, 1500),
            other => panic!("parsed {other:?}"),
        }
    }
}
