//! SIGHUP reload (Pingora has no handler of its own; without one SIGHUP would kill the process)
//! and the process's signal handling, handed to Pingora as its [`ShutdownSignalWatch`]:
//!
//! - SIGHUP: re-read and validate the file; valid → zones and pools updated in place (their state
//!   kept) and the new snapshot swapped in atomically; invalid → every problem logged,
//!   `gateway_config_reloads_total{result="error"}`, the old configuration keeps serving.
//! - SIGTERM: graceful shutdown with the configured grace; SIGINT: fast; SIGQUIT: Pingora's
//!   socket hand-off upgrade.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, ConfigErrors};
use crate::state::State;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// The registries could not take the new config.
    #[error("{0}")]
    Install(#[from] crate::state::SnapshotError),
}

/// Reloads the configuration file into `state`; records the result for `/status` and metrics.
pub fn reload(state: &State) -> Result<(), ReloadError> {
    let result = try_reload(state);
    let (label, error) = match &result {
        Ok(()) => ("ok", None),
        Err(e) => ("error", Some(e.to_string())),
    };
    state
        .metrics
        .config_reloads
        .with_label_values(&[label])
        .inc();
    {
        let mut last = state.last_reload.lock();
        last.ok = Some(result.is_ok());
        last.at = Some(SystemTime::now());
        last.error = error;
    }
    match &result {
        Ok(()) => {
            let cfg = state.snapshot();
            tracing::info!(
                path = %cfg.config.source.path,
                sha256 = %cfg.config.source.sha256,
                routes = cfg.config.routes.len(),
                "configuration reloaded"
            );
        }
        Err(ReloadError::Invalid(errors)) => {
            for line in errors.lines() {
                tracing::error!(problem = %line, "reload rejected: invalid configuration");
            }
            tracing::error!("reload rejected; the previous configuration stays in service");
        }
        Err(e) => tracing::error!(error = %e, "reload failed; the previous configuration stays"),
    }
    result
}

fn try_reload(state: &State) -> Result<(), ReloadError> {
    let mut new = config::load(&state.config_path)?;
    let old = state.snapshot();
    let old = &old.config;
    // Listeners and threads are bound at start-up; they need a restart to change.
    if new.listen != old.listen {
        tracing::warn!(old = %old.listen, new = %new.listen, "listen changed: restart needed, keeping the old listener");
        new.listen = old.listen;
    }
    if new.admin_listen != old.admin_listen {
        tracing::warn!(old = %old.admin_listen, new = %new.admin_listen, "admin_listen changed: restart needed, keeping the old listener");
        new.admin_listen = old.admin_listen;
    }
    if new.server != old.server {
        tracing::warn!("server settings changed: restart needed, keeping the old ones");
        new.server = old.server.clone();
    }
    state.install(new)?;
    Ok(())
}

/// Makes SIGHUP harmless from process start. The reloading handler is only installed once the
/// server runs; registering SIGHUP with tokio here (the registration is process-wide and never
/// removed) closes the start-up window in which the default action would kill the process.
pub fn guard_sighup_early() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
    match rt {
        Ok(rt) => rt.block_on(async {
            if let Err(e) = signal(SignalKind::hangup()) {
                tracing::warn!(error = %e, "cannot guard SIGHUP during start-up");
            }
        }),
        Err(e) => tracing::warn!(error = %e, "cannot guard SIGHUP during start-up"),
    }
}

/// Pingora's signal watch plus SIGHUP reloads.
pub struct Signals {
    state: Arc<State>,
}

impl Signals {
    /// Signals handled for `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let streams = (
            signal(SignalKind::hangup()),
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (Ok(mut hup), Ok(mut quit), Ok(mut term), Ok(mut int)) = streams else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received, reloading configuration");
                    let state = Arc::clone(&self.state);
                    // File I/O and validation off the signal task's thread.
                    if let Err(e) = tokio::task::spawn_blocking(move || reload(&state).map(|_| ())).await {
                        tracing::error!(error = %e, "reload task failed");
                    }
                }
                _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}
