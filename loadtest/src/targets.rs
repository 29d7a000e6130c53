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
/// The three gateways of the local scaled stack (`scripts/run-local.sh --cluster`).
pub const LOCAL_CLUSTER_GATEWAYS: [&str; 3] = [
    "http://127.0.0.1:8080",
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
];
/// The three gateways of the scaled compose stack (`docker-compose.cluster.yml`).
pub const COMPOSE_CLUSTER_GATEWAYS: [&str; 3] = [
    "http://127.0.0.1:80",
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
];
/// Their admin listeners, in the same order (local and compose).
pub const CLUSTER_ADMINS: [&str; 3] = [
    "http://127.0.0.1:9901",
    "http://127.0.0.1:9902",
    "http://127.0.0.1:9903",
];
/// The Redis Cluster nodes of the local scaled stack.
pub const LOCAL_REDIS_NODES: [&str; 6] = [
    "127.0.0.1:7000",
    "127.0.0.1:7001",
    "127.0.0.1:7002",
    "127.0.0.1:7003",
    "127.0.0.1:7004",
    "127.0.0.1:7005",
];
/// The compose file of the scaled stack (`--cluster`).
pub const CLUSTER_COMPOSE_FILE: &str = "docker-compose.cluster.yml";
/// The Redis Cluster services of the scaled compose stack.
pub const CLUSTER_REDIS_SERVICES: [&str; 6] = [
    "redis-1", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
];

/// How faults that SPEC §9 calls "real" are injected on a compose stack.
#[derive(Debug, Clone, Serialize)]
pub struct ComposeTarget {
    /// `-f FILE` for `docker compose`, when not the default file of the current directory.
    pub file: Option<PathBuf>,
    /// Service stopped by `replica-down`.
    pub replica_service: String,
    /// Service stopped by `inventory-down`.
    pub redis_service: String,
    /// The Redis Cluster node services (`--cluster`; empty otherwise).
    pub redis_services: Vec<String>,
}

/// Every URL a scenario talks to.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// Gateway proxy base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// Gateway admin base URL (`/status`, `/metrics`).
    pub admin: String,
    /// Every gateway, for the scenarios that spread their traffic over several
    /// (`cluster-flood`, `shard-failover`); the first is [`Targets::gateway`].
    pub gateways: Vec<String>,
    /// Their admin listeners, in the same order; the first is [`Targets::admin`].
    pub admins: Vec<String>,
    /// The Redis Cluster nodes as `host:port` on this machine (the local scaled stack).
    pub redis_nodes: Vec<String>,
    /// Targeting the scaled compose stack (`--cluster`).
    pub cluster: bool,
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
    /// `--gateway` (repeatable; the first is the one single-gateway scenarios use).
    pub gateways: Vec<String>,
    /// `--admin` (repeatable, in the order of the gateways).
    pub admins: Vec<String>,
    /// `--redis-node host:port` (repeatable): the local cluster's nodes.
    pub redis_nodes: Vec<String>,
    /// `--cluster`: the scaled compose stack.
    pub cluster: bool,
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
        // `--cluster` is the scaled compose stack: compose faults, on its own file.
        let compose = o.compose || o.cluster;
        let owned = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let gateways = if !o.gateways.is_empty() {
            o.gateways
        } else if o.cluster {
            owned(&COMPOSE_CLUSTER_GATEWAYS)
        } else if compose {
            owned(&[COMPOSE_GATEWAY])
        } else {
            // The local stack; the two gateways after the first exist only with
            // `scripts/run-local.sh --cluster`, and only the cluster scenarios use them.
            owned(&LOCAL_CLUSTER_GATEWAYS)
        };
        let admins = if !o.admins.is_empty() {
            o.admins
        } else if o.cluster || !compose {
            owned(&CLUSTER_ADMINS)
        } else {
            owned(&[ADMIN])
        };
        let gateways: Vec<String> = gateways.into_iter().map(trim).collect();
        let admins: Vec<String> = admins.into_iter().map(trim).collect();
        Self {
            gateway: gateways
                .first()
                .cloned()
                .unwrap_or_else(|| LOCAL_GATEWAY.to_owned()),
            admin: admins.first().cloned().unwrap_or_else(|| ADMIN.to_owned()),
            gateways,
            admins,
            redis_nodes: if o.redis_nodes.is_empty() {
                owned(&LOCAL_REDIS_NODES)
            } else {
                o.redis_nodes
            },
            cluster: o.cluster,
            reservations: o
                .reservations
                .unwrap_or_else(|| RESERVATIONS.iter().map(|s| s.to_string()).collect())
                .into_iter()
                .map(trim)
                .collect(),
            payments: trim(o.payments.unwrap_or_else(|| PAYMENTS.to_owned())),
            notifications: trim(o.notifications.unwrap_or_else(|| NOTIFICATIONS.to_owned())),
            compose: compose.then(|| ComposeTarget {
                file: o
                    .compose_file
                    .or_else(|| o.cluster.then(|| PathBuf::from(CLUSTER_COMPOSE_FILE))),
                replica_service: "reservations-2".to_owned(),
                redis_service: if o.cluster { "redis-1" } else { "redis" }.to_owned(),
                redis_services: if o.cluster {
                    owned(&CLUSTER_REDIS_SERVICES)
                } else {
                    Vec::new()
                },
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
        assert_eq!(t.gateways.len(), 3);
        assert_eq!(t.gateways[0], t.gateway);
        assert_eq!(t.admins[0], t.admin);
        assert_eq!(t.redis_nodes[0], "127.0.0.1:7000");
    }

    #[test]
    fn cluster_targets_the_scaled_compose_stack() {
        let t = Targets::resolve(TargetOverrides {
            cluster: true,
            ..Default::default()
        });
        assert_eq!(t.gateway, "http://127.0.0.1:80");
        assert_eq!(t.gateways[2], "http://127.0.0.1:8082");
        assert_eq!(t.admins[1], "http://127.0.0.1:9902");
        let c = t.compose.expect("compose");
        assert_eq!(c.file, Some(PathBuf::from(CLUSTER_COMPOSE_FILE)));
        assert_eq!(c.redis_services.len(), 6);
        let plain = Targets::resolve(TargetOverrides {
            compose: true,
            gateways: vec!["http://h:1/".into(), "http://h:2".into()],
            ..Default::default()
        });
        assert_eq!(plain.gateway, "http://h:1");
        assert_eq!(plain.gateways, vec!["http://h:1", "http://h:2"]);
        assert_eq!(plain.admins, vec![ADMIN]);
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
