//! The Redis Cluster nodes of a stack, reached either directly (local `redis-server` processes on
//! loopback ports, as `scripts/run-local.sh --cluster` starts them) or through
//! `docker compose exec` (the scaled compose stack, whose nodes are not published on the host).
//! Also stops a node for real and registers how to start it again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::faults::{self, Compose, FaultError, ProcessSpec, RestoreAction, Restorer};
use crate::resp::{self, RespError};
use crate::topology::{self, Node};

/// Bound on one admin command to one node.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A node could not be reached, identified, stopped or started.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// A direct command failed.
    #[error(transparent)]
    Resp(#[from] RespError),
    /// A compose command or a process operation failed.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// No node answered `CLUSTER NODES`.
    #[error("no Redis Cluster node answered CLUSTER NODES ({0})")]
    NoneAnswered(String),
    /// A node of the topology is not one this stack knows how to reach.
    #[error("cannot map node {0} to a local port or compose service")]
    Unmapped(String),
}

/// How the cluster's nodes are reached.
#[derive(Debug, Clone)]
pub enum NodeSet {
    /// `redis-server` processes on this host: their `host:port` addresses.
    Local {
        /// Seed addresses, e.g. `127.0.0.1:7000`.
        seeds: Vec<String>,
    },
    /// Compose services running `redis-server` on port 6379.
    Compose {
        /// The compose project.
        compose: Compose,
        /// Service names, e.g. `redis-1`..`redis-6`.
        services: Vec<String>,
    },
}

/// One node as this stack reaches it: a loopback address or a compose service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Handle {
    /// `host:port` on this machine.
    Local(String),
    /// Compose service name.
    Service(String),
}

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handle::Local(a) => write!(f, "{a}"),
            Handle::Service(s) => write!(f, "service {s}"),
        }
    }
}

impl NodeSet {
    /// Every node handle this set knows of.
    pub fn handles(&self) -> Vec<Handle> {
        match self {
            NodeSet::Local { seeds } => seeds.iter().cloned().map(Handle::Local).collect(),
            NodeSet::Compose { services, .. } => {
                services.iter().cloned().map(Handle::Service).collect()
            }
        }
    }

    /// Runs a read-only `redis-cli`-style command on one node; returns its text answer.
    pub async fn text(&self, h: &Handle, args: &[&str]) -> Result<String, NodesError> {
        match (self, h) {
            (_, Handle::Local(addr)) => Ok(resp::command_text(addr, args, CALL_TIMEOUT).await?),
            (NodeSet::Compose { compose, .. }, Handle::Service(svc)) => {
                let mut cmd = vec!["redis-cli"];
                cmd.extend_from_slice(args);
                let out = compose.exec(svc, &cmd).await?;
                Ok(out.replace('\r', ""))
            }
            (NodeSet::Local { .. }, Handle::Service(svc)) => Err(NodesError::Unmapped(svc.clone())),
        }
    }

    /// `CLUSTER NODES` from the first node that answers, skipping `avoid` (a node known to be
    /// down). Returns which node answered and the parsed topology.
    pub async fn topology(
        &self,
        avoid: Option<&Handle>,
    ) -> Result<(Handle, Vec<Node>), NodesError> {
        let mut errors = Vec::new();
        for h in self.handles() {
            if Some(&h) == avoid {
                continue;
            }
            match self.text(&h, &["CLUSTER", "NODES"]).await {
                Ok(t) => {
                    let nodes = topology::parse_nodes(&t);
                    if !nodes.is_empty() {
                        return Ok((h, nodes));
                    }
                    errors.push(format!("{h}: empty answer"));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(NodesError::NoneAnswered(errors.join("; ")))
    }

    /// Maps node ids to handles. Direct nodes are known by the address they announce; compose
    /// services are asked for their `CLUSTER MYID` (ids survive restarts, container addresses
    /// may not).
    pub async fn id_map(&self, nodes: &[Node]) -> Result<BTreeMap<String, Handle>, NodesError> {
        let mut map = BTreeMap::new();
        match self {
            NodeSet::Local { .. } => {
                for n in nodes {
                    map.insert(n.id.clone(), Handle::Local(n.addr.clone()));
                }
            }
            NodeSet::Compose { .. } => {
                for h in self.handles() {
                    if let Ok(id) = self.text(&h, &["CLUSTER", "MYID"]).await {
                        map.insert(id.trim().to_owned(), h);
                    }
                }
            }
        }
        if let Some(n) = nodes.iter().find(|n| !map.contains_key(&n.id)) {
            return Err(NodesError::Unmapped(format!("{} ({})", n.id, n.addr)));
        }
        Ok(map)
    }

    /// `INFO replication` field `name` of a node (`role`, `master_link_status`).
    pub async fn replication_field(&self, h: &Handle, name: &str) -> Option<String> {
        let info = self.text(h, &["INFO", "replication"]).await.ok()?;
        resp::info_field(&info, name)
    }

    /// Stops a node for real: `docker compose stop` its service, or `kill -9` the process
    /// listening on its port. How to start it again is registered with `restorer` first.
    /// Returns a description for the report.
    pub async fn stop(
        &self,
        h: &Handle,
        restorer: &Restorer,
        log: &Path,
    ) -> Result<String, NodesError> {
        match (self, h) {
            (NodeSet::Compose { compose, .. }, Handle::Service(svc)) => {
                restorer
                    .push(RestoreAction::ComposeStart(compose.clone(), svc.clone()))
                    .await;
                compose.stop(svc).await?;
                Ok(format!("docker compose stop {svc}"))
            }
            (_, Handle::Local(addr)) => {
                let port = addr
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .ok_or_else(|| NodesError::Unmapped(addr.clone()))?;
                let pid = faults::pid_listening_on(port).ok_or_else(|| {
                    NodesError::Unmapped(format!("{addr}: no process listens there"))
                })?;
                let spec = restart_spec(addr, pid).await?;
                let how = format!("kill -9 {pid} (restart: {})", spec.render());
                restorer
                    .push(RestoreAction::Respawn(spec, log.to_owned()))
                    .await;
                faults::kill_hard(pid).await?;
                Ok(how)
            }
            (NodeSet::Local { .. }, Handle::Service(svc)) => Err(NodesError::Unmapped(svc.clone())),
        }
    }
}

/// How to start the `redis-server` with `pid` again. Its own command line when it still has one;
/// Redis rewrites its process title (`redis-server 127.0.0.1:7000 [cluster]`) unless started
/// with `--set-proc-title no`, and then the arguments that matter are read back with
/// `CONFIG GET` (while it still answers) and passed as flags.
async fn restart_spec(addr: &str, pid: u32) -> Result<ProcessSpec, NodesError> {
    let mut spec = ProcessSpec::capture(pid)?;
    if spec.argv.len() > 1 {
        return Ok(spec);
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.display()
                .to_string()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_else(|_| "redis-server".to_owned());
    let keys = [
        "port",
        "bind",
        "dir",
        "cluster-enabled",
        "cluster-config-file",
        "cluster-node-timeout",
        "cluster-require-full-coverage",
        "appendonly",
        "save",
        "logfile",
    ];
    let mut argv = vec![exe];
    for k in keys {
        let reply = resp::command(addr, &["CONFIG", "GET", k], CALL_TIMEOUT).await?;
        for (key, value) in resp::pairs(&reply) {
            argv.push(format!("--{key}"));
            argv.push(value);
        }
    }
    // Stay in the foreground so the respawned pid is the server's.
    argv.extend(["--daemonize", "no", "--set-proc-title", "no"].map(str::to_owned));
    spec.argv = argv;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_of_each_kind() {
        let l = NodeSet::Local {
            seeds: vec!["127.0.0.1:7000".into()],
        };
        assert_eq!(l.handles(), vec![Handle::Local("127.0.0.1:7000".into())]);
        let c = NodeSet::Compose {
            compose: Compose { file: None },
            services: vec!["redis-1".into()],
        };
        assert_eq!(c.handles(), vec![Handle::Service("redis-1".into())]);
        assert_eq!(
            Handle::Service("redis-1".into()).to_string(),
            "service redis-1"
        );
    }
}
