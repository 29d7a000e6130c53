//! Server selection: least requests in flight among the available servers, ties broken
//! round-robin, skipping the servers this request already tried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::server::ServerState;

/// The server chosen for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Index of the server in the pool (for `server_guard`, `report` and `tried`).
    pub index: usize,
    /// Its resolved address: give this to the `HttpPeer` (never a host name).
    pub addr: SocketAddr,
    /// `host:port` as written in the config (shared, cloning does not allocate).
    pub server: Arc<str>,
}

/// No server can take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no healthy upstream server ({available_tried} available, all already tried)")]
pub struct NoHealthyUpstream {
    /// Available servers (healthy, resolved, not ejected) that this request had already tried.
    /// Zero means the pool has no available server at all (answer 503 `no_healthy_upstream`);
    /// more means the retries used them up (the previous attempt's error stands, e.g. 502
    /// `upstream_unreachable`).
    pub available_tried: usize,
}

impl NoHealthyUpstream {
    /// True when the pool has available servers but this request already tried them all.
    pub fn all_tried(&self) -> bool {
        self.available_tried > 0
    }
}

/// Picks among `servers`, starting the round at `start`.
pub(crate) fn pick(
    servers: &[Arc<ServerState>],
    start: usize,
    tried: &[usize],
    now: Instant,
) -> Result<Selected, NoHealthyUpstream> {
    let n = servers.len();
    let mut best: Option<(usize, SocketAddr, usize)> = None;
    let mut available_tried = 0;
    for offset in 0..n {
        let index = (start.wrapping_add(offset)) % n;
        let server = &servers[index];
        let Some(addr) = server.available_at(server.ms_at(now)) else {
            continue;
        };
        if tried.contains(&index) {
            available_tried += 1;
            continue;
        }
        let inflight = server.inflight();
        if best.is_none_or(|(_, _, least)| inflight < least) {
            best = Some((index, addr, inflight));
        }
    }
    match best {
        Some((index, addr, _)) => Ok(Selected {
            index,
            addr,
            server: Arc::clone(&servers[index].label),
        }),
        None => Err(NoHealthyUpstream { available_tried }),
    }
}
