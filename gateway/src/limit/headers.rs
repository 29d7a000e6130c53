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

use std::cell::RefCell;

use http::HeaderValue;

use super::req::{ceil_secs, ms_until_leaked_since, mul_div_ceil};

/// Policies a thread keeps made (see [`RateLimitHeaders::policy_header`]); past it the memo
/// starts again, so zones dropped or re-rated by reloads cannot grow it.
const POLICY_MEMO_MAX: usize = 32;

/// A `RateLimit-Policy` value made once: (zone name, rate, burst, value).
type MadePolicy = (Box<str>, u64, u64, HeaderValue);

thread_local! {
    /// `RateLimit-Policy` values made by this thread.
    static POLICY_MEMO: RefCell<Vec<MadePolicy>> = const { RefCell::new(Vec::new()) };
}

/// The values of the `RateLimit-Policy` and `RateLimit` header fields for one zone, computed on
/// demand (only responses that carry them pay for the arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders<'a> {
    policy: &'a str,
    /// Milli-requests per second.
    rate: u64,
    /// Burst in milli-requests.
    burst: u64,
    /// The key's stored excess after the decision (milli-requests).
    excess: u64,
    /// Milliseconds since that state's `last`.
    since_last_ms: i64,
    /// The request was rejected: nothing remains.
    rejected: bool,
}

impl<'a> RateLimitHeaders<'a> {
    /// Name of the policy header field.
    pub const POLICY_NAME: &'static str = "ratelimit-policy";
    /// Name of the current-state header field.
    pub const NAME: &'static str = "ratelimit";

    pub(crate) fn new(
        policy: &'a str,
        rate: u64,
        burst: u64,
        excess: u64,
        since_last_ms: i64,
        rejected: bool,
    ) -> Self {
        RateLimitHeaders {
            policy,
            rate: rate.max(1),
            burst,
            excess,
            since_last_ms,
            rejected,
        }
    }

    /// Policy name: the zone name.
    pub fn policy(&self) -> &'a str {
        self.policy
    }

    /// Quota: requests an idle client may send at once (`burst + 1`).
    pub fn quota(&self) -> u64 {
        self.burst / 1000 + 1
    }

    /// Window in seconds in which a whole quota is given back (`ceil(q / rate)`).
    pub fn window_secs(&self) -> u64 {
        ceil_secs(mul_div_ceil(self.quota(), 1_000_000, self.rate))
    }

    /// Requests that would pass now without waiting.
    pub fn remaining(&self) -> u64 {
        if self.rejected {
            0
        } else {
            self.burst.saturating_sub(self.excess) / 1000
        }
    }

    /// Seconds until the whole quota is available again (the next request would find excess 0).
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(ms_until_leaked_since(
            self.since_last_ms,
            self.rate,
            self.excess.saturating_add(1000),
        ))
    }

    /// The `RateLimit-Policy` field value, e.g. `"reservations";q=6;w=3`.
    pub fn policy_value(&self) -> String {
        let mut s = sf_string(self.policy);
        push_param(&mut s, ";q=", self.quota());
        push_param(&mut s, ";w=", self.window_secs());
        s
    }

    /// [`Self::policy_value`] as a header value. The policy depends only on the zone and the
    /// rule, so each thread makes it once and hands out clones (a reference count, no copy):
    /// formatting and allocating it for every response cost ~600 instructions.
    pub fn policy_header(&self) -> HeaderValue {
        POLICY_MEMO.with_borrow_mut(|memo| {
            let known = memo.iter().find(|(name, rate, burst, _)| {
                (*rate, *burst) == (self.rate, self.burst) && **name == *self.policy
            });
            if let Some((.., value)) = known {
                return value.clone();
            }
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(self.policy_value()))
                .expect("sf_string writes printable ASCII only");
            if memo.len() == POLICY_MEMO_MAX {
                memo.clear();
            }
            memo.push((self.policy.into(), self.rate, self.burst, value.clone()));
            value
        })
    }

    /// The `RateLimit` field value, e.g. `"reservations";r=5;t=1`.
    pub fn value(&self) -> String {
        let mut s = sf_string(self.policy);
        push_param(&mut s, ";r=", self.remaining());
        push_param(&mut s, ";t=", self.reset_secs());
        s
    }
}

/// Appends `name` and `n` in decimal (itoa: these values are made for every limited response).
fn push_param(out: &mut String, name: &str, n: u64) {
    out.push_str(name);
    out.push_str(itoa::Buffer::new().format(n));
}

/// Serializes a Structured Field string (RFC 9651 §4.1.6): quoted, `"` and `\` escaped; other
/// characters outside printable ASCII are replaced by `?` (zone names are plain identifiers).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 24);
    out.push('"');
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        // The usual zone name needs no escaping: copied whole, not pushed `char` by `char`.
        out.push_str(s);
        out.push('"');
        return out;
    }
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
        // 2r/s burst 5, rejected with a full bucket (excess 5000, last just now).
        let h = RateLimitHeaders::new("reservations", 2000, 5000, 5000, 0, true);
        assert_eq!(h.policy_value(), r#""reservations";q=6;w=3"#);
        assert_eq!(h.value(), r#""reservations";r=0;t=3"#);
        // First request of a fresh key: 5 left, the quota is whole again after 500 ms.
        let fresh = RateLimitHeaders::new("reservations", 2000, 5000, 0, 0, false);
        assert_eq!(fresh.value(), r#""reservations";r=5;t=1"#);
        // 100r/m (1666) burst 20: q = 21, w = ceil(21 / 1.666) = 13.
        let per_ip = RateLimitHeaders::new("per_ip", 1666, 20_000, 0, 0, false);
        assert_eq!(per_ip.policy_value(), r#""per_ip";q=21;w=13"#);
        let odd = RateLimitHeaders::new("a\"b\\c\u{e9}", 2000, 5000, 5000, 0, true);
        assert_eq!(odd.value(), r#""a\"b\\c?";r=0;t=3"#);
        assert!(http::HeaderValue::from_str(&odd.policy_value()).is_ok());
    }

    #[test]
    fn the_policy_header_is_made_once_per_zone_and_rule() {
        let h = |zone, rate, burst| RateLimitHeaders::new(zone, rate, burst, 0, 0, false);
        let first = h("memo", 2000, 5000).policy_header();
        assert_eq!(first, r#""memo";q=6;w=3"#);
        // Same zone and rule: the same bytes, shared, not made again.
        let again = h("memo", 2000, 5000).policy_header();
        assert_eq!(again.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        // A reload that changes the rule, or another zone, gets its own value.
        assert_eq!(h("memo", 1000, 5000).policy_header(), r#""memo";q=6;w=6"#);
        assert_eq!(h("memo", 2000, 0).policy_header(), r#""memo";q=1;w=1"#);
        assert_eq!(h("other", 2000, 5000).policy_header(), r#""other";q=6;w=3"#);
        // Bounded: many rules later the memo holds at most POLICY_MEMO_MAX.
        for burst in 0..3 * POLICY_MEMO_MAX as u64 {
            let v = h("memo", 2000, burst * 1000).policy_header();
            assert_eq!(v, h("memo", 2000, burst * 1000).policy_value().as_str());
        }
        assert!(POLICY_MEMO.with_borrow(Vec::len) <= POLICY_MEMO_MAX);
    }
}
