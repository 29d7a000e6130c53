//! Client-side protections (SPEC §7 `client:`): who the client is ([`client_ip`]), how large its
//! body may be ([`BodyLimit`]) and how it is received ([`body`]), how long its request head may
//! take ([`deadline`]), and how many connections may be open ([`connections`]).

pub mod body;
pub mod connections;
pub mod deadline;

use std::net::IpAddr;

use http::header::{HeaderMap, CONTENT_LENGTH};
use ipnet::IpNet;

/// The client address: the socket `peer`, unless the peer is a trusted proxy; then the
/// right-most address of `X-Forwarded-For` that is not itself trusted (NGINX `real_ip` with
/// `real_ip_recursive on`). If every listed address is trusted, the left-most one is used; an
/// entry that is not an IP address stops the walk at the last good address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut current = peer;
    // Several X-Forwarded-For lines are one list, in order.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for value in values.iter().rev() {
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded_ip(entry) else {
                return current;
            };
            current = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    current
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    None
}

/// What the request head says about the body size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredBody {
    /// `Content-Length` within the limit (or no body announced).
    Fits,
    /// `Content-Length` above the limit: answer 413 at once.
    TooLarge(u64),
}

/// Counts request body bytes against `client.max_body_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    max: u64,
    seen: u64,
}

impl BodyLimit {
    /// A limit of `max` bytes.
    pub fn new(max: u64) -> Self {
        Self { max, seen: 0 }
    }

    /// Checks the `Content-Length` header (unparseable values are left to Pingora's framing,
    /// which rejects them; chunked bodies are counted by [`BodyLimit::add`]).
    pub fn declared(&self, headers: &HeaderMap) -> DeclaredBody {
        let len = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        match len {
            Some(n) if n > self.max => DeclaredBody::TooLarge(n),
            _ => DeclaredBody::Fits,
        }
    }

    /// Adds a received chunk; `false` once the total exceeds the limit.
    pub fn add(&mut self, bytes: usize) -> bool {
        self.seen = self.seen.saturating_add(bytes as u64);
        self.seen <= self.max
    }

    /// Bytes counted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            &xff(&["1.1.1.1"]),
            &nets(&["127.0.0.0/8"]),
        );
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        let ip = client_ip("127.0.0.1".parse().unwrap(), &xff(&["1.1.1.1"]), &[]);
        assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_gives_right_most_untrusted() {
        let trusted = nets(&["127.0.0.0/8", "10.0.0.0/8"]);
        let peer = "127.0.0.1".parse().unwrap();
        let ip = client_ip(peer, &xff(&["9.9.9.9, 1.1.1.1, 10.0.0.2"]), &trusted);
        assert_eq!(ip, "1.1.1.1".parse::<IpAddr>().unwrap());
        let ip = client_ip(peer, &xff(&["9.9.9.9", "1.1.1.1:555, 10.0.0.2"]), &trusted);
        assert_eq!(ip, "1.1.1.1".parse::<IpAddr>().unwrap());
        // All trusted: the left-most.
        let ip = client_ip(peer, &xff(&["10.0.0.3, 10.0.0.2"]), &trusted);
        assert_eq!(ip, "10.0.0.3".parse::<IpAddr>().unwrap());
        // Garbage stops the walk.
        let ip = client_ip(peer, &xff(&["1.1.1.1, junk, 10.0.0.2"]), &trusted);
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
        // No header: the peer.
        let ip = client_ip(peer, &HeaderMap::new(), &trusted);
        assert_eq!(ip, peer);
    }

    #[test]
    fn body_limit() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert_eq!(BodyLimit::new(10).declared(&h), DeclaredBody::TooLarge(11));
        assert_eq!(BodyLimit::new(11).declared(&h), DeclaredBody::Fits);
        let mut b = BodyLimit::new(10);
        assert!(b.add(6));
        assert!(b.add(4));
        assert!(!b.add(1));
        assert_eq!(b.seen(), 11);
    }
}
