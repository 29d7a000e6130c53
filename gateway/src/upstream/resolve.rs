//! Name resolution of `host:port` server specs, off the request path.
//!
//! IP literals never touch the resolver. Host names are resolved when a pool first sees them
//! (config load or reload) and again before every active health check, so a container that
//! compose stops (its name vanishes) or replaces (new address) is followed within one interval.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::model::ServerSpec;

/// Resolution failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver answered with an error (unknown name, ...).
    #[error("cannot resolve {server}: {source}")]
    Lookup {
        /// `host:port`.
        server: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The resolver answered with no address.
    #[error("{server} resolves to no address")]
    NoAddress {
        /// `host:port`.
        server: String,
    },
    /// The resolver did not answer in time.
    #[error("resolving {server} timed out after {timeout:?}")]
    Timeout {
        /// `host:port`.
        server: String,
        /// The bound that was exceeded.
        timeout: Duration,
    },
}

/// The address of an IP-literal spec (`10.0.0.1`, `::1` or `[::1]`), without any lookup.
pub(crate) fn literal(spec: &ServerSpec) -> Option<SocketAddr> {
    let host = spec
        .host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&spec.host);
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, spec.port))
}

/// Picks one address: the first IPv4 one if any (the proxy and the checks then agree), else the
/// first.
fn pick(
    addrs: impl Iterator<Item = SocketAddr>,
    spec: &ServerSpec,
) -> Result<SocketAddr, ResolveError> {
    let mut first = None;
    for addr in addrs {
        if addr.is_ipv4() {
            return Ok(addr);
        }
        first.get_or_insert(addr);
    }
    first.ok_or_else(|| ResolveError::NoAddress {
        server: spec.to_string(),
    })
}

/// Resolves with the blocking system resolver. Used by `Upstreams::apply` for servers it has not
/// seen before, so that a freshly loaded pool can serve at once; may block briefly.
pub(crate) fn resolve_blocking(spec: &ServerSpec) -> Result<SocketAddr, ResolveError> {
    if let Some(addr) = literal(spec) {
        return Ok(addr);
    }
    let addrs = (spec.host.as_str(), spec.port)
        .to_socket_addrs()
        .map_err(|source| ResolveError::Lookup {
            server: spec.to_string(),
            source,
        })?;
    pick(addrs, spec)
}

/// Resolves asynchronously within `timeout` (background checker).
pub(crate) async fn resolve(
    spec: &ServerSpec,
    timeout: Duration,
) -> Result<SocketAddr, ResolveError> {
    if let Some(addr) = literal(spec) {
        return Ok(addr);
    }
    let lookup = tokio::net::lookup_host((spec.host.as_str(), spec.port));
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(addrs)) => pick(addrs, spec),
        Ok(Err(source)) => Err(ResolveError::Lookup {
            server: spec.to_string(),
            source,
        }),
        Err(_) => Err(ResolveError::Timeout {
            server: spec.to_string(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, port: u16) -> ServerSpec {
        ServerSpec {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn literals_need_no_lookup() {
        assert_eq!(
            literal(&spec("127.0.0.1", 80)),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(literal(&spec("::1", 81)), Some("[::1]:81".parse().unwrap()));
        assert_eq!(
            literal(&spec("[::1]", 82)),
            Some("[::1]:82".parse().unwrap())
        );
        assert_eq!(literal(&spec("reservations-1", 80)), None);
    }

    #[tokio::test]
    async fn localhost_resolves_and_unknown_names_fail() {
        let addr = resolve(&spec("localhost", 3001), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 3001);
        // `.invalid` is reserved (RFC 6761) and never resolves.
        assert!(
            resolve(&spec("no-such-host.invalid", 1), Duration::from_secs(5))
                .await
                .is_err()
        );
        assert!(resolve_blocking(&spec("no-such-host.invalid", 1)).is_err());
    }
}
