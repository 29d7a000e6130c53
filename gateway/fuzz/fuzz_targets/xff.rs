//! `gateway::client::client_ip` with arbitrary `X-Forwarded-For` bytes, peer and trusted list.
//! Must never panic, and the answer must be the peer or one of the listed addresses, and the
//! peer itself whenever the peer is not trusted.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn ip(u: &mut Unstructured) -> Result<IpAddr> {
    Ok(if u.arbitrary::<bool>()? {
        IpAddr::V4(Ipv4Addr::from(u.arbitrary::<[u8; 4]>()?))
    } else {
        IpAddr::V6(Ipv6Addr::from(u.arbitrary::<[u8; 16]>()?))
    })
}

fn input(u: &mut Unstructured) -> Result<(IpAddr, Vec<IpNet>, Vec<Vec<u8>>)> {
    let peer = ip(u)?;
    let mut trusted = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let addr = ip(u)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = u.int_in_range(0..=max)?;
        if let Ok(net) = IpNet::new(addr, prefix) {
            trusted.push(net);
        }
    }
    let mut values = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        values.push(u.arbitrary::<Vec<u8>>()?);
    }
    // The rest of the input as one more header value (lets the fuzzer grow long lists).
    let rest = u.len();
    values.push(u.bytes(rest)?.to_vec());
    Ok((peer, trusted, values))
}

/// Every address a header value could name, parsed the way a reader would.
fn listed(value: &str) -> Vec<IpAddr> {
    value
        .split(',')
        .filter_map(|e| {
            let e = e.trim();
            e.parse::<IpAddr>()
                .ok()
                .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        })
        .map(|ip| ip.to_canonical())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((peer, trusted, values)) = input(&mut u) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let mut candidates = vec![peer];
    for v in &values {
        if let Ok(hv) = HeaderValue::from_bytes(v) {
            if let Ok(s) = hv.to_str() {
                candidates.extend(listed(s));
            }
            headers.append("x-forwarded-for", hv);
        }
    }
    let got = gateway::client::client_ip(peer, &headers, &trusted);
    assert!(
        candidates.contains(&got),
        "client_ip {got} is neither the peer {peer} nor listed in {values:?}"
    );
    let peer_trusted = trusted.iter().any(|n| n.contains(&peer.to_canonical()));
    if !peer_trusted {
        assert_eq!(
            got, peer,
            "an untrusted peer's X-Forwarded-For was believed"
        );
    }
});
