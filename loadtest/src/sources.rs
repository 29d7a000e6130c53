//! Virtual clients with distinct loopback source addresses.
//!
//! The gateway limits per `client_ip` (SPEC §7). On Linux every 127.0.0.0/8 address is local, so a
//! client bound to 127.a.b.c is, for the gateway, a different client from one bound to 127.a.b.d.
//! A scenario that needs many independent buyers (or fresh limiter keys) takes a [`SourcePool`].
//! Each client also sends `X-Forwarded-For` with its address, which only matters when the gateway
//! trusts the peer (a compose stack behind a proxy); otherwise the gateway ignores it.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Client;

use crate::http::{self, HttpError};

/// One virtual client.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its address (also sent as `X-Forwarded-For`), or `None` for the default route.
    pub addr: Option<Ipv4Addr>,
    /// Its keep-alive client.
    pub client: Client,
}

impl Source {
    /// Headers identifying this client.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self.addr {
            Some(a) => vec![("x-forwarded-for", a.to_string())],
            None => Vec::new(),
        }
    }
}

/// A set of virtual clients handed out round robin.
#[derive(Debug)]
pub struct SourcePool {
    sources: Vec<Source>,
    next: AtomicUsize,
}

/// The `index`-th address of a block starting at 127.`seed`.0.1 (never .0 or .255 in the last
/// octet, never 127.0.0.x).
pub fn address(seed: u16, index: usize) -> Ipv4Addr {
    let second = 16 + (seed % 230) as u8; // 16..=245
    let per_third = 254usize;
    let third = ((index / per_third) % 256) as u8;
    let fourth = (index % per_third) as u8 + 1;
    Ipv4Addr::new(127, second, third, fourth)
}

/// Whether this host can bind the address (true for 127/8 on Linux).
pub fn can_bind(addr: Ipv4Addr) -> bool {
    UdpSocket::bind((IpAddr::V4(addr), 0)).is_ok()
}

impl SourcePool {
    /// `count` clients. With `distinct`, client i is bound to [`address`]`(seed, i)`; when the
    /// host cannot bind such addresses, or without `distinct`, all share the default source.
    pub fn new(
        count: usize,
        distinct: bool,
        seed: u16,
        timeout: Duration,
    ) -> Result<Self, HttpError> {
        let count = count.max(1);
        let distinct = distinct && can_bind(address(seed, 0));
        let mut sources = Vec::with_capacity(count);
        if distinct {
            for i in 0..count {
                let a = address(seed, i);
                sources.push(Source {
                    addr: Some(a),
                    client: http::client(Some(IpAddr::V4(a)), timeout, 4)?,
                });
            }
        } else {
            let shared = http::client(None, timeout, count.min(256))?;
            for _ in 0..count {
                sources.push(Source {
                    addr: None,
                    client: shared.clone(),
                });
            }
        }
        Ok(Self {
            sources,
            next: AtomicUsize::new(0),
        })
    }

    /// Whether the clients really have distinct addresses.
    pub fn distinct(&self) -> bool {
        self.sources.first().is_some_and(|s| s.addr.is_some())
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether the pool is empty (never: at least one client is made).
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Client `i` (modulo the pool size).
    pub fn get(&self, i: usize) -> &Source {
        &self.sources[i % self.sources.len()]
    }

    /// The next client, round robin.
    pub fn pick(&self) -> &Source {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.get(i)
    }
}

/// A seed that differs between runs, so limiter keys start fresh.
pub fn run_seed() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos % 65_521) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_loopback() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let a = address(7, i);
            assert!(a.is_loopback());
            assert_ne!(a.octets()[1], 0);
            assert_ne!(a.octets()[3], 0);
            assert_ne!(a.octets()[3], 255);
            assert!(seen.insert(a), "{a} repeated");
        }
    }

    #[test]
    fn pool_round_robin() {
        let p = SourcePool::new(3, true, 9, Duration::from_secs(1)).expect("pool");
        assert_eq!(p.len(), 3);
        let a = p.pick().addr;
        p.pick();
        p.pick();
        assert_eq!(p.pick().addr, a);
    }
}
