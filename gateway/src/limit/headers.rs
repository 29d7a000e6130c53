//! The IETF `RateLimit-Policy` and `RateLimit` response header fields for `limit_req` zones.
//!
//! Follows draft-ietf-httpapi-ratelimit-headers-10 (September 2025): both fields are Structured
//! Field Lists of Items whose value is the policy name (here the zone name, an sf-string):
//!
//! ```text
//! RateLimit-Policy: "reservations";q=6;w=3
//! RateLimit: "reservations";r=5;t=1
//! ```
//!
//! How NGINX's leaky bucket maps onto the draft's quota model, for a zone of rate `R` (requests/s)
//! used with `burst B`:
//! - `q` (quota) = `B + 1`: the number of requests an idle client may send at once.
//! - `w` (window, seconds) = `ceil(q / R)`: the time the bucket needs to give back a whole quota.
//! - `r` (remaining) = requests that would pass right now, one after the other without waiting:
//!   `floor((B·1000 − excess) / 1000)` after this request was accounted; `0` on a rejection.
//! - `t` (reset, seconds) = `ceil` of the time until the whole quota `q` is available again, i.e.
//!   until the next request would find `excess` 0.
//!
//! All values come from the zone's exact per-key state (see [`crate::limit::req`]).

use std::fmt::Write as _;

/// The values of the `RateLimit-Policy` and `RateLimit` header fields for one zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders<'a> {
    /// Policy name: the zone name.
    pub policy: &'a str,
    /// Quota: requests an idle client may send at once (`burst + 1`).
    pub quota: u64,
    /// Window in seconds in which a whole quota is given back.
    pub window_secs: u64,
    /// Requests that would pass now without waiting.
    pub remaining: u64,
    /// Seconds until the whole quota is available again.
    pub reset_secs: u64,
}

impl RateLimitHeaders<'_> {
    /// Name of the policy header field.
    pub const POLICY_NAME: &'static str = "ratelimit-policy";
    /// Name of the current-state header field.
    pub const NAME: &'static str = "ratelimit";

    /// The `RateLimit-Policy` field value, e.g. `"reservations";q=6;w=3`.
    pub fn policy_value(&self) -> String {
        let mut s = sf_string(self.policy);
        // Writing into a String cannot fail.
        let _ = write!(s, ";q={};w={}", self.quota, self.window_secs);
        s
    }

    /// The `RateLimit` field value, e.g. `"reservations";r=5;t=1`.
    pub fn value(&self) -> String {
        let mut s = sf_string(self.policy);
        let _ = write!(s, ";r={};t={}", self.remaining, self.reset_secs);
        s
    }
}

/// Serializes a Structured Field string (RFC 9651 §4.1.6): quoted, `"` and `\` escaped; other
/// characters outside printable ASCII are replaced by `?` (zone names are plain identifiers).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 24);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_draft_10_fields() {
        let h = RateLimitHeaders {
            policy: "reservations",
            quota: 6,
            window_secs: 3,
            remaining: 0,
            reset_secs: 1,
        };
        assert_eq!(h.policy_value(), r#""reservations";q=6;w=3"#);
        assert_eq!(h.value(), r#""reservations";r=0;t=1"#);
        let odd = RateLimitHeaders {
            policy: "a\"b\\c\u{e9}",
            ..h
        };
        assert_eq!(odd.value(), r#""a\"b\\c?";r=0;t=1"#);
        assert!(http::HeaderValue::from_str(&odd.policy_value()).is_ok());
    }
}
