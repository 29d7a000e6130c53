//! Where the stack is: gateway, its admin listener and the backend services (SPEC §3).

use std::path::PathBuf;

use serde::Serialize;

/// Local stack defaults (`scripts/run-local.sh`).
pub const LOCAL_GATEWAY: &str = "http://127.0.0.1:8080";
/// Compose stack gateway (published `80:80`).
pub const COMPOSE_GATEWAY: &str = "http://127.0.0.1:80";
/// Gateway admin listener, local and compose.
pub const ADMIN: &str = "http://127.0.0.1:9901";
/// Reservations replicas, local and compose (published ports).
pub const RESERVATIONS: [&str; 2] = ["http://127.0.0.1:3001", "http://127.0.0.1:3011"];
/// Payments service.
pub const PAYMENTS: &str = "http://127.0.0.1:3002";
/// Notifications service.
pub const NOTIFICATIONS: &str = "http://127.0.0.1:3003";

/// How faults that SPEC §9 calls "real" are injected on a compose stack.
#[derive(Debug, Clone, Serialize)]
pub struct ComposeTarget {
    /// `-f FILE` for `docker compose`, when not the default file of the current directory.
    pub file: Option<PathBuf>,
    /// Service stopped by `replica-down`.
    pub replica_service: String,
    /// Service stopped by `inventory-down`.
    pub redis_service: String,
}

/// Every URL a scenario talks to.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// Gateway proxy base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// Gateway admin base URL (`/status`, `/metrics`).
    pub admin: String,
    /// Reservations replicas, directly (admin, audit, chaos). The second one is the one
    /// `replica-down` takes down.
    pub reservations: Vec<String>,
    /// Payments service base URL.
    pub payments: String,
    /// Notifications service base URL.
    pub notifications: String,
    /// Set when targeting the compose stack.
    pub compose: Option<ComposeTarget>,
    /// Give each virtual client its own loopback source address (127.x.y.z), so the gateway's
    /// per-client limits see distinct clients.
    pub distinct_sources: bool,
}

/// Overrides from the command line; `None` keeps the default of the chosen stack.
#[derive(Debug, Clone, Default)]
pub struct TargetOverrides {
    /// `--gateway`.
    pub gateway: Option<String>,
    /// `--admin`.
    pub admin: Option<String>,
    /// `--reservations URL,URL`.
    pub reservations: Option<Vec<String>>,
    /// `--payments`.
    pub payments: Option<String>,
    /// `--notifications`.
    pub notifications: Option<String>,
    /// `--compose`.
    pub compose: bool,
    /// `--compose-file`.
    pub compose_file: Option<PathBuf>,
    /// `--same-source`: every virtual client uses the default source address.
    pub same_source: bool,
}

fn trim(url: String) -> String {
    url.trim_end_matches('/').to_owned()
}

impl Targets {
    /// Resolves the targets: local stack by default, compose stack with `--compose`, each URL
    /// overridable.
    pub fn resolve(o: TargetOverrides) -> Self {
        let default_gateway = if o.compose {
            COMPOSE_GATEWAY
        } else {
            LOCAL_GATEWAY
        };
        Self {
            gateway: trim(o.gateway.unwrap_or_else(|| default_gateway.to_owned())),
            admin: trim(o.admin.unwrap_or_else(|| ADMIN.to_owned())),
            reservations: o
                .reservations
                .unwrap_or_else(|| RESERVATIONS.iter().map(|s| s.to_string()).collect())
                .into_iter()
                .map(trim)
                .collect(),
            payments: trim(o.payments.unwrap_or_else(|| PAYMENTS.to_owned())),
            notifications: trim(o.notifications.unwrap_or_else(|| NOTIFICATIONS.to_owned())),
            compose: o.compose.then(|| ComposeTarget {
                file: o.compose_file,
                replica_service: "reservations-2".to_owned(),
                redis_service: "redis".to_owned(),
            }),
            distinct_sources: !o.same_source,
        }
    }

    /// The first reservations replica (where events are created and audited).
    pub fn primary(&self) -> &str {
        self.reservations
            .first()
            .map(String::as_str)
            .unwrap_or(RESERVATIONS[0])
    }
}

/// `host:port` of a base URL (`http://127.0.0.1:3011` → `127.0.0.1:3011`).
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

/// The port of a base URL, if it names one.
pub fn port(url: &str) -> Option<u16> {
    authority(url)
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_defaults() {
        let t = Targets::resolve(TargetOverrides::default());
        assert_eq!(t.gateway, "http://127.0.0.1:8080");
        assert_eq!(t.reservations.len(), 2);
        assert!(t.compose.is_none());
        assert!(t.distinct_sources);
    }

    #[test]
    fn compose_and_overrides() {
        let t = Targets::resolve(TargetOverrides {
            compose: true,
            payments: Some("http://h:1/".into()),
            ..Default::default()
        });
        assert_eq!(t.gateway, "http://127.0.0.1:80");
        assert_eq!(t.payments, "http://h:1");
        assert_eq!(
            t.compose.map(|c| c.replica_service).as_deref(),
            Some("reservations-2")
        );
    }

    #[test]
    fn authority_and_port() {
        assert_eq!(authority("http://127.0.0.1:3011/x"), "127.0.0.1:3011");
        assert_eq!(port("http://127.0.0.1:3011"), Some(3011));
        assert_eq!(port("http://localhost"), None);
    }
}
