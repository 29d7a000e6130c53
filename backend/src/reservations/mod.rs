//! The `reservations` service: public API (SPEC §4), the saga on Redis Lua scripts (§5), admin
//! and chaos (§6). One request's path, top to bottom: [`api`] (validation) → [`saga`] (the
//! domain: typed [`model`] and [`error`], no HTTP) → [`inventory`] scripts and [`payer`] →
//! [`answer`] (the one mapping to HTTP answers and metric labels); [`recovery`] and [`sweeper`]
//! finish what crashes and timeouts leave behind.

pub mod admin;
pub mod answer;
pub mod api;
pub mod error;
pub mod events;
pub mod inventory;
pub mod json;
pub mod keys;
pub mod model;
pub mod openapi;
pub mod payer;
pub mod recovery;
pub mod saga;
pub mod sweeper;
pub mod validation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::{get, post, put};
use axum::Router;

use crate::chaos::{self, Chaos};
use crate::error as api_error;
use crate::outbox::{self, OutboxConfig, OutboxMetrics};
use crate::payments_client::{PaymentsClient, PaymentsClientConfig};
use crate::store::{Store, StoreConfig};
use crate::telemetry::{self, Metrics};
use api::AppState;
use events::EventReader;
use inventory::Inventory;
use payer::Payer;
use saga::{Saga, SagaConfig, SagaMetrics};

/// Default listen address (SPEC §3).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3001";
/// Default Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// Default recovery period.
pub const DEFAULT_RECOVERY_INTERVAL_MS: u64 = 1_000;

/// Flags of `backend reservations` (each with an environment twin).
#[derive(Debug, Clone, clap::Args)]
pub struct ReservationsArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Redis holding inventory, sagas and the outbox; with `--redis-mode cluster` the cluster's
    /// seed nodes, comma-separated.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// How long a seat hold lasts before returning to stock by itself, in milliseconds.
    #[arg(long, env = "HOLD_TTL_MS", default_value_t = saga::DEFAULT_HOLD_TTL_MS)]
    pub hold_ttl_ms: u64,
    /// Deadline of a whole `POST /api/reservations`, in milliseconds.
    #[arg(long, env = "REQUEST_DEADLINE_MS", default_value_t = saga::DEFAULT_REQUEST_DEADLINE_MS)]
    pub request_deadline_ms: u64,
    /// How often recovery looks for abandoned sagas, in milliseconds.
    #[arg(long, env = "RECOVERY_INTERVAL_MS", default_value_t = DEFAULT_RECOVERY_INTERVAL_MS)]
    pub recovery_interval_ms: u64,
    /// Saga lease duration (renewed while a step runs), in milliseconds. A crashed replica's
    /// sagas are taken over at most this long after the crash.
    #[arg(long, env = "SAGA_LEASE_MS", default_value_t = saga::DEFAULT_LEASE_MS)]
    pub saga_lease_ms: u64,
    /// How long a reservation that ended without a sale (FAILED, EXPIRED, CANCELLED) is kept,
    /// in seconds (0 = for ever). CONFIRMED reservations are the sales record and always kept.
    #[arg(long, env = "UNSOLD_RESERVATION_TTL_SECS", default_value_t = inventory::DEFAULT_UNSOLD_TTL_SECS)]
    pub unsold_reservation_ttl_secs: u64,
    /// This replica's id (saga lease owner). Default: hostname and process id.
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Guarded Redis tuning.
    #[command(flatten)]
    pub store: StoreConfig,
    /// Payments client tuning (URL, timeouts, retries, breaker, bulkhead).
    #[command(flatten)]
    pub payments: PaymentsClientConfig,
    /// Outbox delivery worker (notifications URL, retries).
    #[command(flatten)]
    pub outbox: OutboxConfig,
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Builds the router (public API, admin, chaos, health, metrics) around a ready [`AppState`].
pub fn router(state: AppState, chaos: Arc<Chaos>, metrics: Arc<Metrics>) -> Router {
    let api = Router::new()
        .route("/api/events", get(api::list_events))
        .route("/api/events/{eventId}", get(api::get_event))
        .route(
            "/api/reservations",
            post(api::create_reservation).get(api::list_reservations),
        )
        .route("/api/reservations/{id}", get(api::get_reservation))
        .route(
            "/api/reservations/{id}/cancel",
            post(api::cancel_reservation),
        )
        .route("/admin/events/{eventId}", put(api::put_event))
        .route("/admin/audit", get(api::get_audit))
        .route("/admin/placement/{eventId}", get(api::get_placement))
        .route("/ready", get(api::ready))
        .with_state(state);
    let app = api
        .merge(telemetry::health_routes())
        .merge(telemetry::metrics_route(metrics.clone()))
        .merge(chaos::admin_router(chaos.clone()))
        .fallback(api_error::no_such_route)
        // After the merges, so that every route (also /health, /metrics, /admin/chaos) answers
        // a wrong method with the JSON 405, and before the layer, which hides the routes' methods.
        .method_not_allowed_fallback(api_error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            chaos,
            chaos::middleware,
        ))
        // The API description is no fault-injection target: served outside the chaos layer.
        .route(
            "/openapi.json",
            get(openapi::openapi_json).fallback(api_error::method_not_allowed),
        );
    telemetry::instrument(app, metrics)
}

/// Runs the service until the process is stopped.
pub async fn run(args: ReservationsArgs) -> anyhow::Result<()> {
    let chaos = Chaos::new();
    let metrics = Metrics::new("reservations").context("metrics")?;
    let store =
        Store::connect(&args.redis_url, args.store.clone(), chaos.clone()).context("redis url")?;
    let payments = PaymentsClient::new(args.payments.clone()).context("payments client")?;
    let owner = args.replica_id.clone().unwrap_or_else(default_replica_id);
    let saga = Saga {
        inv: Inventory::with_unsold_ttl(store.clone(), args.unsold_reservation_ttl_secs),
        payer: Payer::new(payments),
        cfg: Arc::new(SagaConfig {
            hold_ttl_ms: args.hold_ttl_ms.max(1),
            lease_ms: args.saga_lease_ms.max(100),
            request_deadline: Duration::from_millis(args.request_deadline_ms.max(100)),
            owner: owner.clone(),
        }),
        metrics: SagaMetrics::register(&metrics).context("saga metrics")?,
    };
    let events = Arc::new(EventReader::new());

    recovery::seed_if_empty(&saga).await;
    tokio::spawn(recovery::run(
        saga.clone(),
        events.clone(),
        Duration::from_millis(args.recovery_interval_ms),
    ));
    let sweep_every = Duration::from_millis((args.hold_ttl_ms / 4).clamp(20, 500));
    tokio::spawn(sweeper::run(saga.clone(), sweep_every));

    // The sender lives as long as this function: the worker runs until the process ends.
    let (_outbox_stop, outbox_stop_rx) = tokio::sync::watch::channel(false);
    let outbox_metrics = OutboxMetrics::register(&metrics.registry).context("outbox metrics")?;
    outbox::spawn_worker_with_metrics(
        store.clone(),
        args.outbox.clone(),
        owner.clone(),
        outbox_stop_rx,
        outbox_metrics,
    );

    let state = AppState { saga, events };
    let app = router(state, chaos, metrics);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    tracing::info!(listen = %args.listen, replica = %owner, "reservations listening");
    axum::serve(listener, app).await.context("serve")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReservationsArgs,
    }

    #[test]
    fn flags_are_unique_and_defaults_match_the_spec() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.args.listen.to_string(), "127.0.0.1:3001");
        assert_eq!(cli.args.request_deadline_ms, 15_000);
        assert_eq!(cli.args.store.redis_timeout_ms, 1_000);
        assert_eq!(cli.args.payments.payments_url, "http://127.0.0.1:3002");
        assert_eq!(cli.args.outbox.notifications_url, "http://127.0.0.1:3003");
        assert_eq!(cli.args.unsold_reservation_ttl_secs, 7 * 24 * 3600);
        assert_eq!(cli.args.hold_ttl_ms, SagaConfig::default().hold_ttl_ms);
    }
}
