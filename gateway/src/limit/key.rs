//! Limit keys: what a request is counted under (`client_ip`, `header:<Name>`, `global`).
//!
//! A key is resolved once per request and zone into a [`LimitKeyValue`], a cheap borrowed value
//! (an IP as one integer, a header value as a slice of the request's own bytes). Zones store keys
//! in the compact owned form [`OwnedKey`] only when a key is first tracked, so a decision for a key
//! that is already present allocates nothing.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use http::HeaderMap;

use crate::config::model::LimitKey;

/// NGINX skips keys longer than this (`the value of the "..." key is more than 65535 bytes`).
pub const MAX_KEY_LEN: usize = 65535;

/// The value of a limit key for one request, borrowed from the request where possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKeyValue<'a> {
    /// A client IP: IPv4 addresses are stored as their IPv4-mapped IPv6 form, so one integer
    /// identifies every client.
    Ip(u128),
    /// A non-empty header value, at most [`MAX_KEY_LEN`] bytes.
    Header(&'a [u8]),
    /// The single key of a `global` zone.
    Global,
}

impl<'a> LimitKeyValue<'a> {
    /// The key of one client IP address.
    pub fn from_ip(ip: IpAddr) -> LimitKeyValue<'static> {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        LimitKeyValue::Ip(u128::from(v6))
    }

    /// The borrowed form used for hashing and lookups.
    pub(crate) fn as_ref_key(&self) -> KeyRef<'a> {
        match *self {
            LimitKeyValue::Ip(ip) => KeyRef::Ip(ip),
            LimitKeyValue::Header(bytes) => KeyRef::Bytes(bytes),
            LimitKeyValue::Global => KeyRef::Ip(0),
        }
    }
}

/// Resolves a zone's key for one request, like NGINX evaluates the `limit_req_zone` key.
///
/// Returns `None` when the request is not accounted in the zone at all: a missing or empty header
/// value (NGINX: an empty key is not accounted) or one longer than [`MAX_KEY_LEN`] bytes (NGINX logs
/// and skips it). When a header appears several times the first value is used (what NGINX 1.22's
/// `$http_<name>` variable gives).
pub fn resolve_key<'h>(
    key: &LimitKey,
    client_ip: IpAddr,
    headers: &'h HeaderMap,
) -> Option<LimitKeyValue<'h>> {
    match key {
        LimitKey::ClientIp => Some(LimitKeyValue::from_ip(client_ip)),
        LimitKey::Global => Some(LimitKeyValue::Global),
        LimitKey::Header(name) => {
            let value = headers.get(name.as_str())?.as_bytes();
            if value.is_empty() || value.len() > MAX_KEY_LEN {
                None
            } else {
                Some(LimitKeyValue::Header(value))
            }
        }
    }
}

/// A key as stored by a zone: IPs (and the global key) as one integer, header values boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnedKey {
    /// An IP (or `0` for the global key).
    Ip(u128),
    /// A header value.
    Bytes(Box<[u8]>),
}

/// A borrowed key, hashing and comparing equal to the matching [`OwnedKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRef<'a> {
    /// An IP (or `0` for the global key).
    Ip(u128),
    /// A header value.
    Bytes(&'a [u8]),
}

impl KeyRef<'_> {
    /// The owned copy stored when the key is first tracked.
    pub(crate) fn to_owned_key(self) -> OwnedKey {
        match self {
            KeyRef::Ip(ip) => OwnedKey::Ip(ip),
            KeyRef::Bytes(bytes) => OwnedKey::Bytes(bytes.into()),
        }
    }
}

impl OwnedKey {
    /// The borrowed view of this key.
    pub(crate) fn as_key_ref(&self) -> KeyRef<'_> {
        match self {
            OwnedKey::Ip(ip) => KeyRef::Ip(*ip),
            OwnedKey::Bytes(bytes) => KeyRef::Bytes(bytes),
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            KeyRef::Ip(ip) => {
                state.write_u8(0);
                state.write_u128(*ip);
            }
            KeyRef::Bytes(bytes) => {
                state.write_u8(1);
                state.write(bytes);
            }
        }
    }
}

impl Hash for OwnedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_key_ref().hash(state);
    }
}

impl hashbrown::Equivalent<OwnedKey> for KeyRef<'_> {
    fn equivalent(&self, key: &OwnedKey) -> bool {
        *self == key.as_key_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn client_ip_keys_are_integers_and_v4_maps_into_v6() {
        let v4 = LimitKeyValue::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let mapped =
            LimitKeyValue::from_ip(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()));
        assert_eq!(v4, mapped);
        let other = LimitKeyValue::from_ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_ne!(v4, other);
    }

    #[test]
    fn empty_or_missing_header_is_not_limited() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let key = LimitKey::Header("x-api-key".to_string());
        let mut headers = HeaderMap::new();
        assert_eq!(resolve_key(&key, ip, &headers), None);
        headers.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(resolve_key(&key, ip, &headers), None);
        headers.insert("x-api-key", HeaderValue::from_static("abc"));
        assert_eq!(
            resolve_key(&key, ip, &headers),
            Some(LimitKeyValue::Header(b"abc"))
        );
        assert_eq!(
            resolve_key(&LimitKey::Global, ip, &headers),
            Some(LimitKeyValue::Global)
        );
    }

    #[test]
    fn borrowed_and_owned_keys_hash_alike() {
        let s = ahash::RandomState::new();
        for k in [KeyRef::Ip(7), KeyRef::Bytes(b"key")] {
            assert_eq!(s.hash_one(k), s.hash_one(k.to_owned_key()));
        }
    }
}
