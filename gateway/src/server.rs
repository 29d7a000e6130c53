//! Assembles the Pingora server: the proxy service on `listen`, the admin listener, the upstream
//! background checks, and the signal handling (SIGHUP reload, quick SIGTERM).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminService;
use crate::client::deadline::{ConnectionPolicy, HeadDeadlineApp};
use crate::proxy::Gateway;
use crate::reload::Signals;
use crate::state::State;
use crate::upstream::Upstreams;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin port could not be bound.
    #[error("cannot bind admin_listen {addr}: {source}")]
    AdminBind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The proxy port could not be bound.
    #[error("cannot bind listen {addr}: {source}")]
    ListenBind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Process options that are not part of the configuration file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Take over the listeners of a running gateway (`-u`).
    pub upgrade: bool,
    /// Socket of the SIGQUIT hand-off.
    pub upgrade_sock: std::path::PathBuf,
}

/// Pingora's server settings from the config. `max_retries` only caps the proxy loop; the
/// per-upstream `retries` decide (at most 10 retries, so 11 attempts).
pub fn server_conf(state: &State, opts: &RunOptions) -> ServerConf {
    let snap = state.snapshot();
    let s = &snap.config.server;
    ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        work_stealing: s.work_stealing,
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        fast_timeout_to_tokio_threshold_seconds: Some(s.fast_timeout_to_tokio_threshold_seconds),
        max_retries: 11,
        upgrade_sock: opts.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    }
}

/// Runs the upstream pools' active health checks until shutdown.
struct HealthChecks(Arc<Upstreams>);

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = Arc::clone(&self.0).run_background() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Builds and runs the server until a shutdown signal; returns when it has stopped.
pub fn run(state: Arc<State>, opts: &RunOptions) -> Result<(), StartError> {
    let snap = state.snapshot();
    let listen = snap.config.listen;
    let admin_addr = snap.config.admin_listen;
    drop(snap);

    // Bind-check the proxy port now, so a busy port is a clean start-up error (not when taking
    // the listener over from a running gateway).
    if !opts.upgrade {
        std::net::TcpListener::bind(listen).map_err(|source| StartError::ListenBind {
            addr: listen,
            source,
        })?;
    }
    // SO_REUSEPORT: during an upgrade the old process still listens on the admin port.
    let admin_listener = bind_reuseport(admin_addr).map_err(|source| StartError::AdminBind {
        addr: admin_addr,
        source,
    })?;

    let opt = pingora::server::configuration::Opt {
        upgrade: opts.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf(&state, opts));
    server.bootstrap();

    // The proxy behind the request-head deadline, size limit and framing checks
    // (client/deadline.rs).
    let proxy = pingora::proxy::http_proxy(&server.configuration, Gateway::new(Arc::clone(&state)));
    let app = HeadDeadlineApp::new(proxy, Arc::clone(&state) as Arc<dyn ConnectionPolicy>);
    let mut proxy = Service::new("gateway proxy".to_string(), app);
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);

    let mut admin = background_service(
        "admin",
        AdminService::new(Arc::clone(&state), admin_listener),
    );
    admin.threads = Some(1);
    server.add_service(admin);

    let mut health =
        background_service("health checks", HealthChecks(Arc::clone(&state.upstreams)));
    health.threads = Some(1);
    server.add_service(health);

    tracing::info!(%listen, admin = %admin_addr, "gateway starting");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals::new(state)),
    });
    Ok(())
}

/// A listening socket with `SO_REUSEADDR` and `SO_REUSEPORT` set.
fn bind_reuseport(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
