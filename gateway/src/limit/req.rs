//! `limit_req`: NGINX's leaky bucket (`ngx_http_limit_req_module.c`), arithmetic ported exactly.
//!
//! Per key NGINX keeps `excess` (milli-requests, 1000 = one request) and `last` (ms). On a request:
//!
//! ```text
//! ms = (signed)(now - last);  if ms < -60000 { ms = 1 } else if ms < 0 { ms = 0 }
//! excess = max(0, excess - rate * ms / 1000 + 1000)        // rate in milli-requests/s
//! excess > burst·1000  → reject, nothing changes (the key is only marked recently used)
//! otherwise            → store excess; last = now only if ms != 0
//! ```
//!
//! A key seen for the first time is stored with `excess = 0, last = now` (so `burst + 1` requests
//! pass at once). The delay of an accepted request is `(excess − delay·1000) · 1000 / rate` ms when
//! `excess > delay·1000`, else 0; `nodelay` makes `delay` infinite, and without `delay`/`nodelay`
//! it is 0 so all accepted excess is delayed to the rate. Several limits on one route are all looked
//! up first and accounted only if none rejects (NGINX locks the nodes during lookup and accounts
//! them after every limit passed); the longest delay applies.
//!
//! Differences from NGINX, all deliberate: the state is per process in sharded maps bounded by
//! `max_keys` with approximate least-recently-used eviction per shard (NGINX: a shared-memory zone
//! evicting its least recently used node when full; here a key is evicted or expired only once it
//! went unused for at least 7/8 of its shard's size in lookups, see `limit/lru.rs`, and eviction
//! never changes the state of a key that stays tracked); every limit of a route is evaluated even
//! after one rejects (NGINX stops at the first; the reported zone is the first rejecting one either
//! way, nothing is accounted either way); `dry_run` is per limit, not per location (a would-be
//! rejection by a dry-run limit accounts nothing in that zone, like `limit_req_dry_run`); the
//! arithmetic is done in 128 bits, so it cannot wrap where NGINX's 64-bit arithmetic would after
//! months of idleness at absurd rates.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use super::headers::RateLimitHeaders;
use super::key::{KeyRef, LimitKeyValue};
use super::lru::KeyLru;
use crate::config::model::{LimitKey, LimitReqRule, LimitReqZone, Rate, Scope};

/// Keys per shard below which a zone is not split further.
const KEYS_PER_SHARD: usize = 4096;
/// Most shards of one zone (a power of two).
const MAX_SHARDS: usize = 16;

/// NGINX's per-key state (`ngx_http_limit_req_node_t` without tree, queue and lock count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReqNode {
    /// Accepted excess in milli-requests.
    pub(crate) excess: u64,
    /// Milliseconds (zone clock) of the last accounted request that moved the clock.
    pub(crate) last: u64,
}

/// One `limit_req` zone: its rate and the exact per-key state, sharded so that worker threads
/// rarely contend. Cheap to share (`Arc<ReqZone>`); state survives config reloads through
/// [`crate::limit::Zones::apply`].
pub struct ReqZone {
    name: Box<str>,
    key: LimitKey,
    rate: AtomicU64,
    max_keys: AtomicUsize,
    /// `scope: cluster`: the decisions are the store's and this zone's own state is the local
    /// fallback bucket, at `configured_rate / share` (SPEC §10.1).
    cluster: AtomicBool,
    /// The zone's rate as configured (`rate` is this divided by `share` for cluster zones).
    configured_rate: AtomicU64,
    /// Live gateways the fallback rate is divided by (1 for local zones).
    share: AtomicU64,
    /// Zone-clock milliseconds + 1 of the last fallback decision (0: none yet).
    last_fallback: AtomicU64,
    epoch: Instant,
    shards: Box<[Mutex<KeyLru<ReqNode>>]>,
    /// Hashes keys once per decision: bits 32.. pick the shard, the shard's table uses the hash.
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for ReqZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqZone")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("rate_milli_per_sec", &self.rate.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys.load(Ordering::Relaxed))
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// How many shards a zone of `max_keys` keys gets: one per [`KEYS_PER_SHARD`] keys, a power of
/// two, at most [`MAX_SHARDS`]; `global` zones have one key and one shard.
pub(crate) fn shard_count(max_keys: usize, key: &LimitKey) -> usize {
    if matches!(key, LimitKey::Global) {
        return 1;
    }
    let n = (max_keys / KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

impl ReqZone {
    /// An empty zone for `cfg`.
    pub fn new(cfg: &LimitReqZone) -> Self {
        Self::with_epoch(cfg, Instant::now())
    }

    fn with_epoch(cfg: &LimitReqZone, epoch: Instant) -> Self {
        let max_keys = cfg.max_keys.max(1);
        let n = shard_count(max_keys, &cfg.key);
        let hasher = ahash::RandomState::new();
        ReqZone {
            name: cfg.name.as_str().into(),
            key: cfg.key.clone(),
            rate: AtomicU64::new(cfg.rate.milli_per_sec.max(1)),
            max_keys: AtomicUsize::new(max_keys),
            cluster: AtomicBool::new(cfg.scope == Scope::Cluster),
            configured_rate: AtomicU64::new(cfg.rate.milli_per_sec.max(1)),
            share: AtomicU64::new(1),
            last_fallback: AtomicU64::new(0),
            epoch,
            shards: (0..n)
                .map(|_| Mutex::new(KeyLru::new(max_keys / n)))
                .collect(),
            hasher,
        }
    }

    /// A zone for `cfg` holding the state of `old` (used on reload when the shard layout changes):
    /// keys are moved least recently used first, so the most recent survive a smaller `max_keys`.
    pub(crate) fn rebuilt_from(cfg: &LimitReqZone, old: &ReqZone) -> Self {
        let zone = Self::with_epoch(cfg, old.epoch);
        zone.set_share(old.share.load(Ordering::Relaxed));
        for shard in old.shards.iter() {
            let mut old_lru = shard.lock();
            for (key, node) in old_lru.drain_lru_first() {
                let k = key.as_key_ref();
                let (shard, hash) = zone.shard_for(k);
                let mut new_lru = shard.lock();
                match new_lru.get_mut(hash, k) {
                    Some(slot) => *slot = node,
                    None => {
                        new_lru.insert_new(hash, k, node);
                    }
                }
            }
        }
        zone
    }

    /// Whether `cfg` can be applied to this zone in place (same key kind and shard layout).
    pub(crate) fn can_update_in_place(&self, cfg: &LimitReqZone) -> bool {
        self.key == cfg.key && shard_count(cfg.max_keys.max(1), &cfg.key) == self.shards.len()
    }

    /// Applies a new rate and `max_keys` in place, keeping the per-key state (evicting least
    /// recently used keys if `max_keys` shrank).
    pub(crate) fn update(&self, cfg: &LimitReqZone) {
        let max_keys = cfg.max_keys.max(1);
        self.cluster
            .store(cfg.scope == Scope::Cluster, Ordering::Relaxed);
        self.configured_rate
            .store(cfg.rate.milli_per_sec.max(1), Ordering::Relaxed);
        self.set_share(self.share.load(Ordering::Relaxed));
        self.max_keys.store(max_keys, Ordering::Relaxed);
        let per_shard = max_keys / self.shards.len();
        for shard in self.shards.iter() {
            shard.lock().set_cap(per_shard);
        }
    }

    /// Zone name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the zone is keyed on (pass it to [`crate::limit::resolve_key`]).
    pub fn key_spec(&self) -> &LimitKey {
        &self.key
    }

    /// The zone's configured rate (for a cluster zone, the rate of all gateways together).
    pub fn rate(&self) -> Rate {
        Rate {
            milli_per_sec: self.configured_rate.load(Ordering::Relaxed),
        }
    }

    /// The rate this process decides on locally: the configured rate, divided by the live
    /// gateways for a cluster zone's fallback bucket.
    pub fn local_rate(&self) -> Rate {
        Rate {
            milli_per_sec: self.rate.load(Ordering::Relaxed),
        }
    }

    /// `scope: cluster`.
    pub fn is_cluster(&self) -> bool {
        self.cluster.load(Ordering::Relaxed)
    }

    /// The scope as configured.
    pub fn scope(&self) -> Scope {
        if self.is_cluster() {
            Scope::Cluster
        } else {
            Scope::Local
        }
    }

    /// Divides a cluster zone's fallback rate by `gateways` (at least 1; never below 1
    /// milli-request/s). Local zones keep their configured rate.
    pub fn set_share(&self, gateways: u64) {
        let n = if self.is_cluster() {
            gateways.max(1)
        } else {
            1
        };
        self.share.store(n, Ordering::Relaxed);
        let rate = self.configured_rate.load(Ordering::Relaxed);
        self.rate.store((rate / n).max(1), Ordering::Relaxed);
    }

    /// Live gateways the fallback rate is divided by.
    pub fn share(&self) -> u64 {
        self.share.load(Ordering::Relaxed)
    }

    /// Records that a decision of this zone was taken on the local fallback bucket at `now`.
    pub fn mark_fallback(&self, now: Instant) {
        self.last_fallback
            .store(self.now_ms(now) + 1, Ordering::Relaxed);
    }

    /// Whether a fallback decision was taken within `within` before `now`.
    pub fn fell_back_within(&self, now: Instant, within: Duration) -> bool {
        match self.last_fallback.load(Ordering::Relaxed) {
            0 => false,
            t => self.now_ms(now) + 1 < t + within.as_millis() as u64,
        }
    }

    /// Upper bound of tracked keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    /// Keys currently tracked (locks each shard briefly; meant for `/status`, not the request path).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// The instant the zone clock counts from.
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The zone clock: whole milliseconds since the zone's epoch (NGINX uses whole ms too).
    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The shard holding `key`, and the key's hash.
    fn shard_for(&self, key: KeyRef<'_>) -> (&Mutex<KeyLru<ReqNode>>, u64) {
        let hash = self.hasher.hash_one(key);
        // Bits 32.. : hashbrown takes bucket indices from the low bits and its tag from the top 7.
        let i = ((hash >> 32) as usize) & (self.shards.len() - 1);
        (&self.shards[i], hash)
    }
}

/// NGINX: `ms = (ngx_msec_int_t) (now - lr->last)`, then `ms < -60000 → 1`, `ms < 0 → 0`.
pub(crate) fn elapsed_ms(now: u64, last: u64) -> i64 {
    let ms = now.wrapping_sub(last) as i64;
    if ms < -60000 {
        1
    } else if ms < 0 {
        0
    } else {
        ms
    }
}

/// `floor(a · b / d)` without overflow (64-bit fast path; 128-bit only when the product needs it).
fn mul_div(a: u64, b: u64, d: u64) -> u64 {
    let d = d.max(1);
    match a.checked_mul(b) {
        Some(p) => p / d,
        None => u64::try_from(u128::from(a) * u128::from(b) / u128::from(d)).unwrap_or(u64::MAX),
    }
}

/// `ceil(a · b / d)` without overflow.
pub(crate) fn mul_div_ceil(a: u64, b: u64, d: u64) -> u64 {
    let d = d.max(1);
    match a.checked_mul(b) {
        Some(p) => p.div_ceil(d),
        None => u64::try_from((u128::from(a) * u128::from(b)).div_ceil(u128::from(d)))
            .unwrap_or(u64::MAX),
    }
}

/// NGINX: `excess = lr->excess - ctx->rate * ms / 1000 + 1000`, clamped at 0 (`ms` as returned
/// by [`elapsed_ms`], never negative).
pub(crate) fn leaked_excess(excess: u64, rate: u64, ms: i64) -> u64 {
    let leaked = mul_div(rate, ms.max(0) as u64, 1000);
    excess.saturating_add(1000).saturating_sub(leaked)
}

/// Milliseconds from `now` until `floor(rate · ms / 1000) >= drop` where `ms` counts from
/// `node.last`: the time until the stored excess has leaked by `drop` milli-requests.
fn ms_until_leaked(node: ReqNode, now: u64, rate: u64, drop: u64) -> u64 {
    ms_until_leaked_since(now.wrapping_sub(node.last) as i64, rate, drop)
}

/// [`ms_until_leaked`] for a state whose `last` was `raw` ms before now.
pub(crate) fn ms_until_leaked_since(raw: i64, rate: u64, drop: u64) -> u64 {
    let needed = mul_div_ceil(drop, 1000, rate);
    if raw >= 0 {
        needed.saturating_sub(raw as u64)
    } else {
        needed.saturating_add(raw.unsigned_abs())
    }
}

pub(crate) fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// NGINX's lazy expiry when a node is created (`ngx_http_limit_req_expire(ctx, 1)`): drop up to
/// two of the least recently used keys (NGINX: the two at the tail of its queue; here: two of the
/// long-unused keys under the map's sweep hand, see [`KeyLru::expire`]) that are idle for at least
/// 60 s and whose excess has fully leaked.
fn expire_idle(lru: &mut KeyLru<ReqNode>, now: u64, rate: u64) {
    lru.expire(|node| {
        let ms = (now.wrapping_sub(node.last) as i64).unsigned_abs();
        ms >= 60000 && node.excess <= mul_div(rate, ms, 1000)
    });
}

/// One limit to check: a zone, the request's key in it, and the route's use of the zone.
#[derive(Debug, Clone, Copy)]
pub struct ReqCheck<'a> {
    /// The zone.
    pub zone: &'a ReqZone,
    /// The request's key in the zone (from [`crate::limit::resolve_key`] with `zone.key_spec()`;
    /// requests whose key resolves to `None` are not checked in that zone at all).
    pub key: LimitKeyValue<'a>,
    /// Burst, delay, dry run.
    pub rule: &'a LimitReqRule,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqDecision<'a> {
    /// The request passes (after `delay`, if non-zero). Every limit that did not reject in dry run
    /// has been accounted.
    Pass {
        /// How long to hold the request before proxying it (zero: at once).
        delay: Duration,
        /// The zone imposing `delay`, when non-zero.
        delayed_zone: Option<&'a str>,
        /// Dry-run limits that would have rejected the request (not accounted in those zones).
        dry_run_rejected: Vec<&'a str>,
        /// Header values for the most constrained enforcing limit (fewest requests remaining), or
        /// `None` when every checked limit is a dry run.
        rate_limit: Option<RateLimitHeaders<'a>>,
    },
    /// The request is rejected; nothing was accounted in any zone.
    Reject {
        /// The first rejecting zone in route order.
        zone: &'a str,
        /// Whole seconds (≥ 1) until a request with this key would pass every rejecting limit.
        retry_after_secs: u64,
        /// The excess (milli-requests) the request would have brought in `zone`, for logs.
        excess: u64,
        /// Header values for `zone`.
        rate_limit: RateLimitHeaders<'a>,
    },
}

/// A rule's parameters in NGINX's units.
#[derive(Clone, Copy, Default)]
struct Limits {
    rate: u64,
    burst: u64,
    delay: u64,
}

impl Limits {
    fn of(check: &ReqCheck<'_>) -> Self {
        Self::at_rate(check, check.zone.rate.load(Ordering::Relaxed))
    }

    /// The limits of `check` at `rate` milli-requests/s.
    fn at_rate(check: &ReqCheck<'_>, rate: u64) -> Self {
        Limits {
            rate: rate.max(1),
            burst: check.rule.burst.saturating_mul(1000),
            // NGINX: nodelay sets delay to NGX_MAX_INT_T_VALUE / 1000 (then · 1000).
            delay: if check.rule.nodelay {
                u64::MAX
            } else {
                check.rule.delay.saturating_mul(1000)
            },
        }
    }

    /// NGINX's `ngx_http_limit_req_account` delay for an accepted excess, in ms.
    fn delay_ms(&self, excess: u64) -> u64 {
        if excess <= self.delay {
            0
        } else {
            mul_div(excess - self.delay, 1000, self.rate)
        }
    }
}

/// One limit after lookup: the stored state and what this request would make of it.
#[derive(Clone, Copy, Default)]
struct Looked {
    stored: Option<ReqNode>,
    now: u64,
    ms: i64,
    excess: u64,
}

impl Looked {
    fn new(stored: Option<ReqNode>, now: u64, rate: u64) -> Self {
        match stored {
            Some(node) => {
                let ms = elapsed_ms(now, node.last);
                Looked {
                    stored,
                    now,
                    ms,
                    excess: leaked_excess(node.excess, rate, ms),
                }
            }
            None => Looked {
                stored,
                now,
                ms: 0,
                excess: 0,
            },
        }
    }

    /// The node as NGINX leaves it after accounting this request.
    fn committed(&self) -> ReqNode {
        match self.stored {
            Some(node) => ReqNode {
                excess: self.excess,
                last: if self.ms != 0 { self.now } else { node.last },
            },
            None => ReqNode {
                excess: 0,
                last: self.now,
            },
        }
    }

    /// Headers after this request was accounted.
    fn pass_headers<'a>(&self, name: &'a str, l: &Limits) -> RateLimitHeaders<'a> {
        let node = self.committed();
        RateLimitHeaders::new(
            name,
            l.rate,
            l.burst,
            node.excess,
            self.now.wrapping_sub(node.last) as i64,
            false,
        )
    }

    /// The stored state (a new key's when absent).
    fn stored_or_new(&self) -> ReqNode {
        self.stored.unwrap_or(ReqNode {
            excess: 0,
            last: self.now,
        })
    }

    /// Milliseconds until a request with this key would pass this limit (for Retry-After).
    fn ms_until_pass(&self, l: &Limits) -> u64 {
        let node = self.stored_or_new();
        ms_until_leaked(
            node,
            self.now,
            l.rate,
            node.excess.saturating_add(1000).saturating_sub(l.burst),
        )
    }

    /// Headers for a rejection, from the unchanged stored state.
    fn reject_headers<'a>(&self, name: &'a str, l: &Limits) -> RateLimitHeaders<'a> {
        let node = self.stored_or_new();
        RateLimitHeaders::new(
            name,
            l.rate,
            l.burst,
            node.excess,
            self.now.wrapping_sub(node.last) as i64,
            true,
        )
    }
}

/// Access to the locked shards of the limits being checked.
trait LockedShards {
    /// The stored node of check `i`, marking the key recently used.
    fn lookup(&mut self, i: usize) -> Option<ReqNode>;
    /// Stores the node of check `i`, creating the key if new.
    fn store(&mut self, i: usize, node: ReqNode, rate: u64);
}

fn store_in(lru: &mut KeyLru<ReqNode>, hash: u64, key: KeyRef<'_>, node: ReqNode, rate: u64) {
    match lru.get_mut(hash, key) {
        Some(slot) => *slot = node,
        None => track_new(lru, hash, key, node, rate),
    }
}

/// Starts tracking a key that is not tracked yet, expiring idle keys first as NGINX does when
/// it creates a node.
fn track_new(lru: &mut KeyLru<ReqNode>, hash: u64, key: KeyRef<'_>, node: ReqNode, rate: u64) {
    expire_idle(lru, node.last, rate);
    lru.insert_new(hash, key, node);
}

/// What [`OneShard::lookup`] found, so that the store after it needs no second table probe.
#[derive(Clone, Copy)]
enum Found {
    /// No lookup yet.
    NotLooked,
    /// The key is in this slot.
    At(u32),
    /// The key is not tracked.
    Absent,
}

/// The one locked shard of a single-limit check. The shard stays locked from lookup to store, so
/// what the lookup found still holds at the store.
struct OneShard<'z, 'k> {
    guard: MutexGuard<'z, KeyLru<ReqNode>>,
    hash: u64,
    key: KeyRef<'k>,
    found: Found,
}

impl LockedShards for OneShard<'_, '_> {
    fn lookup(&mut self, _: usize) -> Option<ReqNode> {
        match self.guard.find(self.hash, self.key) {
            Some(idx) => {
                self.found = Found::At(idx);
                self.guard.value_at(idx, self.hash).copied()
            }
            None => {
                self.found = Found::Absent;
                None
            }
        }
    }
    fn store(&mut self, _: usize, node: ReqNode, rate: u64) {
        match self.found {
            Found::At(idx) => {
                if let Some(slot) = self.guard.value_at(idx, self.hash) {
                    *slot = node;
                    return;
                }
            }
            Found::Absent => {
                track_new(&mut self.guard, self.hash, self.key, node, rate);
                return;
            }
            Found::NotLooked => {}
        }
        store_in(&mut self.guard, self.hash, self.key, node, rate);
    }
}

type Guard<'z> = MutexGuard<'z, KeyLru<ReqNode>>;

/// Where check `i` lives: index into the locked guards, hash and key.
type Slot<'k> = (usize, u64, KeyRef<'k>);

struct ManyShards<'s, 'z, 'k> {
    guards: &'s mut [Option<Guard<'z>>],
    slots: &'s [Slot<'k>],
}

impl LockedShards for ManyShards<'_, '_, '_> {
    fn lookup(&mut self, i: usize) -> Option<ReqNode> {
        let (g, hash, key) = self.slots[i];
        self.guards[g].as_mut()?.get_mut(hash, key).copied()
    }
    fn store(&mut self, i: usize, node: ReqNode, rate: u64) {
        let (g, hash, key) = self.slots[i];
        if let Some(guard) = self.guards[g].as_mut() {
            store_in(guard, hash, key, node, rate);
        }
    }
}

/// Checks up to this many limits without allocating.
const INLINE_CHECKS: usize = 4;

/// Locks the shards of `checks` in address order (each distinct shard once) into `guards`,
/// records in `slots` where each check lives, then decides. `order`, `slots` and `guards` have
/// `checks.len()` entries.
fn check_many<'a>(
    checks: &[ReqCheck<'a>],
    now: Instant,
    commit: bool,
    order: &mut [(usize, usize)],
    slots: &mut [Slot<'a>],
    guards: &mut [Option<Guard<'a>>],
) -> ReqDecision<'a> {
    let mut shards: [Option<&'a Mutex<KeyLru<ReqNode>>>; INLINE_CHECKS] = [None; INLINE_CHECKS];
    let mut shard_vec = Vec::new();
    let shard_of: &mut [Option<&'a Mutex<KeyLru<ReqNode>>>] = if checks.len() <= INLINE_CHECKS {
        &mut shards[..checks.len()]
    } else {
        shard_vec.resize(checks.len(), None);
        &mut shard_vec
    };
    for (i, c) in checks.iter().enumerate() {
        let key = c.key.as_ref_key();
        let (shard, hash) = c.zone.shard_for(key);
        shard_of[i] = Some(shard);
        slots[i] = (0, hash, key);
        order[i] = (shard as *const Mutex<KeyLru<ReqNode>> as usize, i);
    }
    order.sort_unstable();
    let mut locked = 0usize;
    let mut prev_addr = None;
    for &(addr, i) in order.iter() {
        if prev_addr != Some(addr) {
            guards[locked] = shard_of[i].map(|s| s.lock());
            locked += 1;
            prev_addr = Some(addr);
        }
        slots[i].0 = locked - 1;
    }
    let mut shards = ManyShards {
        guards: &mut guards[..locked],
        slots,
    };
    if commit {
        decide(checks, now, &mut shards)
    } else {
        decide(checks, now, &mut Peek(&mut shards))
    }
}

/// Lookups through `S`, no stores: a decision that accounts nothing.
struct Peek<'s, S>(&'s mut S);

impl<S: LockedShards> LockedShards for Peek<'_, S> {
    fn lookup(&mut self, i: usize) -> Option<ReqNode> {
        self.0.lookup(i)
    }
    fn store(&mut self, _: usize, _: ReqNode, _: u64) {}
}

/// Checks a request against all its `limit_req` limits at time `now` and accounts it in every zone
/// only if no enforcing limit rejects it (see the module docs for the exact arithmetic).
///
/// The shards involved are locked together (in address order, so concurrent checks cannot
/// deadlock) for the whole check, which makes the check-then-account atomic. For a key already
/// tracked nothing is allocated (up to four limits per route; more use small vectors).
pub fn check<'a>(checks: &[ReqCheck<'a>], now: Instant) -> ReqDecision<'a> {
    check_or_peek(checks, now, true)
}

/// What [`check`] would decide at `now`, accounting nothing (keys are only marked recently used).
/// Used for a route's local zones before its cluster zones are asked (SPEC §10.1).
pub fn peek<'a>(checks: &[ReqCheck<'a>], now: Instant) -> ReqDecision<'a> {
    check_or_peek(checks, now, false)
}

fn check_or_peek<'a>(checks: &[ReqCheck<'a>], now: Instant, commit: bool) -> ReqDecision<'a> {
    match checks {
        [] => ReqDecision::Pass {
            delay: Duration::ZERO,
            delayed_zone: None,
            dry_run_rejected: Vec::new(),
            rate_limit: None,
        },
        [one] => {
            let key = one.key.as_ref_key();
            let (shard, hash) = one.zone.shard_for(key);
            let mut locked = OneShard {
                guard: shard.lock(),
                hash,
                key,
                found: Found::NotLooked,
            };
            if commit {
                decide(checks, now, &mut locked)
            } else {
                decide(checks, now, &mut Peek(&mut locked))
            }
        }
        many if many.len() <= INLINE_CHECKS => {
            let n = many.len();
            let mut order = [(0usize, 0usize); INLINE_CHECKS];
            let mut slots = [(0usize, 0u64, KeyRef::Ip(0)); INLINE_CHECKS];
            let mut guards: [Option<Guard<'a>>; INLINE_CHECKS] = [None, None, None, None];
            check_many(
                many,
                now,
                commit,
                &mut order[..n],
                &mut slots[..n],
                &mut guards[..n],
            )
        }
        many => {
            let n = many.len();
            let mut order = vec![(0usize, 0usize); n];
            let mut slots = vec![(0usize, 0u64, KeyRef::Ip(0)); n];
            let mut guards: Vec<Option<Guard<'a>>> = (0..n).map(|_| None).collect();
            check_many(many, now, commit, &mut order, &mut slots, &mut guards)
        }
    }
}

fn decide<'a>(
    checks: &[ReqCheck<'a>],
    now: Instant,
    shards: &mut impl LockedShards,
) -> ReqDecision<'a> {
    decide_with(checks, |c| (Limits::of(c), c.zone.now_ms(now)), shards)
}

/// A cluster zone's state as the store read it (SPEC §10.1), in the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredState {
    /// The store's clock (ms) when it decided.
    pub now: u64,
    /// The key's `(excess, last)` before the decision, `None` for a new key.
    pub node: Option<(u64, u64)>,
}

/// The store's state on the request path, as [`LockedShards`]: lookups give what the store read,
/// stores do nothing (the store already accounted the request).
struct Stored<'s>(&'s [StoredState]);

impl LockedShards for Stored<'_> {
    fn lookup(&mut self, i: usize) -> Option<ReqNode> {
        self.0[i]
            .node
            .map(|(excess, last)| ReqNode { excess, last })
    }
    fn store(&mut self, _: usize, _: ReqNode, _: u64) {}
}

/// The rate, burst and delay the store must apply for `check` of a cluster zone: the configured
/// rate (not the fallback share), `burst·1000`, and the dry-run flag. One script argument triple.
pub fn store_args(check: &ReqCheck<'_>) -> [u64; 3] {
    let l = Limits::at_rate(check, check.zone.configured_rate.load(Ordering::Relaxed));
    [l.rate, l.burst, u64::from(check.rule.dry_run)]
}

/// Rebuilds the decision the store took for `checks` (all of cluster zones) from the state it
/// read (`states[i]` for `checks[i]`) and the rates it was given (`args[i]`, from [`store_args`]):
/// the same arithmetic as [`check`], so the reject/pass outcome is the store's, and the delay,
/// `Retry-After` and RateLimit values follow from it exactly as for a local zone.
pub fn decide_stored<'a>(
    checks: &[ReqCheck<'a>],
    args: &[[u64; 3]],
    states: &[StoredState],
) -> ReqDecision<'a> {
    let mut i = 0usize;
    decide_with(
        checks,
        |c| {
            let l = Limits::at_rate(c, args[i][0]);
            let now = states[i].now;
            i += 1;
            (l, now)
        },
        &mut Stored(states),
    )
}

/// [`decide`] with each check's limits and clock reading from `params` (called once per check,
/// in order).
fn decide_with<'a>(
    checks: &[ReqCheck<'a>],
    mut params: impl FnMut(&ReqCheck<'a>) -> (Limits, u64),
    shards: &mut impl LockedShards,
) -> ReqDecision<'a> {
    // Lookup phase: evaluate every limit without accounting anything.
    let mut looked_small = [(Looked::default(), Limits::default()); INLINE_CHECKS];
    let mut looked_vec = Vec::new();
    let looked: &mut [(Looked, Limits)] = if checks.len() <= looked_small.len() {
        &mut looked_small[..checks.len()]
    } else {
        looked_vec.resize(checks.len(), Default::default());
        &mut looked_vec
    };
    let mut rejected: Option<(usize, u64)> = None; // first rejecting check, longest wait in ms
    for (i, c) in checks.iter().enumerate() {
        let (limits, now_ms) = params(c);
        let l = Looked::new(shards.lookup(i), now_ms, limits.rate);
        if l.excess > limits.burst && !c.rule.dry_run {
            let wait = l.ms_until_pass(&limits);
            rejected = Some(match rejected {
                None => (i, wait),
                Some((first, longest)) => (first, longest.max(wait)),
            });
        }
        looked[i] = (l, limits);
    }

    if let Some((first, wait)) = rejected {
        let c = &checks[first];
        let (l, limits) = looked[first];
        let headers = l.reject_headers(c.zone.name(), &limits);
        return ReqDecision::Reject {
            zone: c.zone.name(),
            retry_after_secs: ceil_secs(wait).max(1),
            excess: l.excess,
            rate_limit: headers,
        };
    }

    // Account phase: every limit passed (dry-run rejections excepted, which account nothing).
    let mut delay_ms = 0u64;
    let mut delayed_zone = None;
    let mut dry_run_rejected = Vec::new();
    let mut rate_limit: Option<RateLimitHeaders<'a>> = None;
    for (i, c) in checks.iter().enumerate() {
        let (l, limits) = looked[i];
        if l.excess > limits.burst {
            dry_run_rejected.push(c.zone.name());
            continue;
        }
        shards.store(i, l.committed(), limits.rate);
        if c.rule.dry_run {
            continue;
        }
        let d = limits.delay_ms(l.excess);
        if d > 0 && d >= delay_ms {
            delay_ms = d;
            delayed_zone = Some(c.zone.name());
        }
        let h = l.pass_headers(c.zone.name(), &limits);
        let tighter = match &rate_limit {
            None => true,
            Some(cur) => {
                let (r, cr) = (h.remaining(), cur.remaining());
                r < cr || (r == cr && h.reset_secs() > cur.reset_secs())
            }
        };
        if tighter {
            rate_limit = Some(h);
        }
    }
    ReqDecision::Pass {
        delay: Duration::from_millis(delay_ms),
        delayed_zone,
        dry_run_rejected,
        rate_limit,
    }
}

/// The current instant, for [`check`] (one clock read per request is enough: NGINX also uses one
/// cached millisecond timestamp per event-loop iteration).
pub fn now() -> Instant {
    Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, rate_milli: u64, max_keys: usize) -> ReqZone {
        ReqZone::new(&LimitReqZone {
            name: name.to_string(),
            key: LimitKey::ClientIp,
            rate: Rate {
                milli_per_sec: rate_milli,
            },
            max_keys,
            scope: Default::default(),
        })
    }

    fn rule(zone: &str, burst: u64, nodelay: bool, delay: u64) -> LimitReqRule {
        LimitReqRule {
            zone: zone.to_string(),
            burst,
            nodelay,
            delay,
            dry_run: false,
        }
    }

    /// A controllable clock: `at(z, ms)` is exactly `ms` on the zone clock.
    fn at(z: &ReqZone, ms: u64) -> Instant {
        z.epoch() + Duration::from_millis(ms)
    }

    const KEY: LimitKeyValue<'static> = LimitKeyValue::Ip(42);

    fn one<'a>(z: &'a ReqZone, r: &'a LimitReqRule, ms: u64) -> ReqDecision<'a> {
        check(
            &[ReqCheck {
                zone: z,
                key: KEY,
                rule: r,
            }],
            at(z, ms),
        )
    }

    fn delay_of(d: &ReqDecision<'_>) -> Option<u64> {
        match d {
            ReqDecision::Pass { delay, .. } => Some(delay.as_millis() as u64),
            ReqDecision::Reject { .. } => None,
        }
    }

    #[test]
    fn nginx_arithmetic_helpers() {
        assert_eq!(elapsed_ms(1500, 1000), 500);
        assert_eq!(elapsed_ms(1000, 1000), 0);
        assert_eq!(elapsed_ms(1000, 1500), 0, "clock behind last: 0");
        assert_eq!(elapsed_ms(1000, 70_000), 1, "more than 60 s behind: 1");
        assert_eq!(leaked_excess(5000, 2000, 500), 5000);
        assert_eq!(leaked_excess(0, 2000, 10_000), 0, "clamped at 0");
        // 100r/m is 1666 milli-requests/s: 600 ms leak 999, 601 ms leak 1001.
        assert_eq!(leaked_excess(0, 1666, 600), 1);
        assert_eq!(leaked_excess(0, 1666, 601), 0);
    }

    #[test]
    fn spec_case_2rs_burst5_nodelay() {
        let z = zone("reservations", 2000, 1000);
        let r = rule("reservations", 5, true, 0);
        let decisions: Vec<_> = (0..15).map(|_| one(&z, &r, 1000)).collect();
        let passed = decisions.iter().filter(|d| delay_of(d) == Some(0)).count();
        assert_eq!(passed, 6);
        assert_eq!(
            decisions.iter().filter(|d| delay_of(d).is_none()).count(),
            9
        );
        // Headers: q = burst + 1, w = q / rate; first request leaves 5, the sixth 0.
        match &decisions[0] {
            ReqDecision::Pass {
                rate_limit: Some(h),
                ..
            } => {
                assert_eq!(
                    (h.quota(), h.window_secs(), h.remaining(), h.reset_secs()),
                    (6, 3, 5, 1)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        match &decisions[5] {
            ReqDecision::Pass {
                rate_limit: Some(h),
                ..
            } => {
                assert_eq!((h.remaining(), h.reset_secs()), (0, 3));
            }
            other => panic!("unexpected {other:?}"),
        }
        match &decisions[6] {
            ReqDecision::Reject {
                zone,
                retry_after_secs,
                excess,
                rate_limit,
            } => {
                assert_eq!(*zone, "reservations");
                assert_eq!(*retry_after_secs, 1);
                assert_eq!(*excess, 6000);
                assert_eq!((rate_limit.remaining(), rate_limit.reset_secs()), (0, 3));
                assert_eq!(rate_limit.policy_value(), "\"reservations\";q=6;w=3");
            }
            other => panic!("unexpected {other:?}"),
        }
        // 499 ms later: still rejected; 500 ms later one more passes, then the next is rejected.
        assert_eq!(delay_of(&one(&z, &r, 1499)), None);
        assert_eq!(delay_of(&one(&z, &r, 1500)), Some(0));
        assert_eq!(delay_of(&one(&z, &r, 1500)), None);
    }

    #[test]
    fn delay_3_serves_four_at_once_then_delays_to_the_rate() {
        let z = zone("z", 2000, 1000);
        let r = rule("z", 5, false, 3);
        let delays: Vec<_> = (0..7).map(|_| delay_of(&one(&z, &r, 1000))).collect();
        // excess 0,1000,2000,3000 ≤ delay → at once; 4000 → (4000-3000)·1000/2000 = 500 ms;
        // 5000 → 1000 ms; 6000 > burst → rejected.
        assert_eq!(
            delays,
            vec![
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(500),
                Some(1000),
                None
            ]
        );
        match one(&z, &r, 1250) {
            // Stored 5000 at 1000 ms; 250 ms leak 500 → 5500 > 5000: rejected, 250 ms to go.
            ReqDecision::Reject {
                retry_after_secs,
                excess,
                ..
            } => {
                assert_eq!((retry_after_secs, excess), (1, 5500));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn without_nodelay_all_excess_is_delayed_to_the_rate() {
        let z = zone("z", 2000, 1000);
        let r = rule("z", 5, false, 0);
        let delays: Vec<_> = (0..7).map(|_| delay_of(&one(&z, &r, 0))).collect();
        assert_eq!(
            delays,
            vec![
                Some(0),
                Some(500),
                Some(1000),
                Some(1500),
                Some(2000),
                Some(2500),
                None
            ]
        );
        match one(&z, &r, 0) {
            ReqDecision::Reject { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        // 700 ms later: 5000 − 1400 + 1000 = 4600 → delayed 2300 ms; `last` moves to 700.
        assert_eq!(delay_of(&one(&z, &r, 700)), Some(2300));
    }

    #[test]
    fn new_key_starts_at_zero_and_last_is_kept_when_ms_is_zero() {
        let z = zone("z", 1000, 1000);
        let r = rule("z", 10, true, 0);
        let _ = one(&z, &r, 5000);
        // A request stamped before `last` (another thread's older clock read) gets ms = 0 and
        // leaves `last` alone, exactly like NGINX.
        let _ = one(&z, &r, 4990);
        let (shard, hash) = z.shard_for(KEY.as_ref_key());
        assert_eq!(
            shard.lock().peek(hash, KEY.as_ref_key()).copied(),
            Some(ReqNode {
                excess: 1000,
                last: 5000
            })
        );
    }

    #[test]
    fn rates_per_minute() {
        // 30r/m = 500 milli-requests/s: one request per 2 s with burst 0.
        let z = zone("m", 30 * 1000 / 60, 1000);
        let r = rule("m", 0, true, 0);
        assert_eq!(delay_of(&one(&z, &r, 0)), Some(0));
        match one(&z, &r, 1000) {
            ReqDecision::Reject {
                retry_after_secs, ..
            } => assert_eq!(retry_after_secs, 1),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(delay_of(&one(&z, &r, 1999)), None);
        assert_eq!(delay_of(&one(&z, &r, 2000)), Some(0));
        // 100r/m = 1666: the integer arithmetic needs 601 ms, not 600.
        let z = zone("m", 100 * 1000 / 60, 1000);
        assert_eq!(delay_of(&one(&z, &r, 0)), Some(0));
        assert_eq!(delay_of(&one(&z, &r, 600)), None);
        assert_eq!(delay_of(&one(&z, &r, 601)), Some(0));
    }

    #[test]
    fn multiple_limits_reject_charges_none_and_longest_delay_applies() {
        let a = zone("a", 2000, 1000);
        let b = zone("b", 1000, 1000);
        let ra = rule("a", 5, false, 0);
        let rb = rule("b", 1, false, 0);
        let both = |ms: u64| {
            check(
                &[
                    ReqCheck {
                        zone: &a,
                        key: KEY,
                        rule: &ra,
                    },
                    ReqCheck {
                        zone: &b,
                        key: KEY,
                        rule: &rb,
                    },
                ],
                at(&a, ms),
            )
        };
        assert_eq!(delay_of(&both(0)), Some(0));
        // a: excess 1000 → 500 ms; b: excess 1000 → 1000 ms. The longest applies.
        match both(0) {
            ReqDecision::Pass {
                delay,
                delayed_zone,
                rate_limit,
                ..
            } => {
                assert_eq!(delay, Duration::from_millis(1000));
                assert_eq!(delayed_zone, Some("b"));
                // The tighter policy is reported: b has 0 left, a has 4.
                assert_eq!(
                    rate_limit.map(|h| (h.policy(), h.remaining())),
                    Some(("b", 0))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // b rejects (2000 > 1000): a must not be charged.
        for _ in 0..3 {
            match both(0) {
                ReqDecision::Reject {
                    zone,
                    retry_after_secs,
                    ..
                } => {
                    assert_eq!((zone, retry_after_secs), ("b", 1));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        match check(
            &[ReqCheck {
                zone: &a,
                key: KEY,
                rule: &ra,
            }],
            at(&a, 0),
        ) {
            ReqDecision::Pass {
                delay, rate_limit, ..
            } => {
                // Third accounted request in a: excess 2000 → 1000 ms, 3 left.
                assert_eq!(delay, Duration::from_millis(1000));
                assert_eq!(rate_limit.map(|h| h.remaining()), Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
        // The first rejecting zone in order is reported; Retry-After covers every rejecting one.
        let rb0 = rule("b", 0, true, 0);
        let ra0 = rule("a", 0, true, 0);
        let k2 = LimitKeyValue::Ip(7);
        let pair = [
            ReqCheck {
                zone: &a,
                key: k2,
                rule: &ra0,
            },
            ReqCheck {
                zone: &b,
                key: k2,
                rule: &rb0,
            },
        ];
        assert_eq!(delay_of(&check(&pair, at(&a, 0))), Some(0));
        match check(&pair, at(&a, 100)) {
            // a: 1000 − 200 → 800 > 0, 400 ms to go; b: 1000 − 100 → 900 > 0, 900 ms to go.
            ReqDecision::Reject {
                zone,
                retry_after_secs,
                ..
            } => {
                assert_eq!((zone, retry_after_secs), ("a", 1));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn same_shard_twice_does_not_deadlock() {
        let a = zone("a", 1000, 10);
        let ra = rule("a", 1, true, 0);
        let c = ReqCheck {
            zone: &a,
            key: KEY,
            rule: &ra,
        };
        assert_eq!(delay_of(&check(&[c, c, c], at(&a, 0))), Some(0));
    }

    #[test]
    fn dry_run_never_rejects_or_delays_and_does_not_account_a_would_be_rejection() {
        let z = zone("d", 2000, 1000);
        let mut r = rule("d", 0, false, 0);
        r.dry_run = true;
        let d0 = one(&z, &r, 0);
        assert!(
            matches!(&d0, ReqDecision::Pass { dry_run_rejected, rate_limit: None, .. } if dry_run_rejected.is_empty())
        );
        match one(&z, &r, 0) {
            ReqDecision::Pass {
                delay,
                dry_run_rejected,
                ..
            } => {
                assert_eq!(delay, Duration::ZERO);
                assert_eq!(dry_run_rejected, vec!["d"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Not accounted: at 600 ms the stored excess is still 0 → passes cleanly (it would be
        // 1000 − 1200 + 1000 = 800 > 0 had the dry-run rejection been accounted).
        match one(&z, &r, 600) {
            ReqDecision::Pass {
                dry_run_rejected, ..
            } => assert!(dry_run_rejected.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
        // A dry-run limit that would only delay does not delay.
        let mut r5 = rule("d", 5, false, 0);
        r5.dry_run = true;
        assert_eq!(delay_of(&one(&z, &r5, 600)), Some(0));
        // An enforcing limit next to a dry-run one still rejects, accounting nothing.
        let e = zone("e", 1000, 1000);
        let re = rule("e", 0, true, 0);
        let pair = [
            ReqCheck {
                zone: &z,
                key: KEY,
                rule: &r5,
            },
            ReqCheck {
                zone: &e,
                key: KEY,
                rule: &re,
            },
        ];
        assert_eq!(delay_of(&check(&pair, at(&z, 600))), Some(0));
        assert!(matches!(
            check(&pair, at(&z, 600)),
            ReqDecision::Reject { zone: "e", .. }
        ));
    }

    #[test]
    fn many_limits_use_the_allocating_path_with_the_same_semantics() {
        let a = zone("a", 1000, 10);
        let b = zone("b", 1000, 10);
        let loose = rule("a", 10, true, 0);
        let strict = rule("b", 1, true, 0);
        let mut checks = Vec::new();
        for _ in 0..5 {
            checks.push(ReqCheck {
                zone: &a,
                key: KEY,
                rule: &loose,
            });
        }
        checks.push(ReqCheck {
            zone: &b,
            key: KEY,
            rule: &strict,
        });
        assert_eq!(delay_of(&check(&checks, at(&a, 0))), Some(0));
        assert_eq!(delay_of(&check(&checks, at(&a, 0))), Some(0));
        assert!(matches!(
            check(&checks, at(&a, 0)),
            ReqDecision::Reject { zone: "b", .. }
        ));
    }

    #[test]
    fn peek_decides_like_check_and_accounts_nothing() {
        let z = zone("p", 2000, 100);
        let r = rule("p", 1, true, 0);
        for _ in 0..5 {
            assert_eq!(
                delay_of(&peek(
                    &[ReqCheck {
                        zone: &z,
                        key: KEY,
                        rule: &r
                    }],
                    at(&z, 0)
                )),
                Some(0)
            );
        }
        assert_eq!(z.keys(), 0, "a peek stores no new key");
        assert_eq!(delay_of(&one(&z, &r, 0)), Some(0));
        assert_eq!(delay_of(&one(&z, &r, 0)), Some(0));
        let c = [ReqCheck {
            zone: &z,
            key: KEY,
            rule: &r,
        }];
        assert_eq!(delay_of(&peek(&c, at(&z, 0))), None);
        assert_eq!(delay_of(&peek(&c, at(&z, 500))), Some(0));
        assert_eq!(delay_of(&one(&z, &r, 500)), Some(0));
    }

    /// The store's decision rebuilt from the state it read equals the local decision on the same
    /// state: same outcome, delay, Retry-After and headers.
    #[test]
    fn decisions_from_stored_state_match_local_ones() {
        let z = zone("s", 2000, 100);
        let r = rule("s", 5, false, 3);
        let c = [ReqCheck {
            zone: &z,
            key: KEY,
            rule: &r,
        }];
        let args = [store_args(&c[0])];
        assert_eq!(args[0], [2000, 5000, 0]);
        let mut stored: Option<(u64, u64)> = None;
        for (i, ms) in [0u64, 0, 0, 0, 0, 0, 0, 250, 1800, 1800]
            .into_iter()
            .enumerate()
        {
            let remote = decide_stored(
                &c,
                &args,
                &[StoredState {
                    now: 10_000 + ms,
                    node: stored,
                }],
            );
            let local = one(&z, &r, ms);
            assert_eq!(remote, local, "request {i} at {ms} ms");
            // What the script stores on a pass.
            if let ReqDecision::Pass { .. } = remote {
                let l = Looked::new(
                    stored.map(|(excess, last)| ReqNode { excess, last }),
                    10_000 + ms,
                    2000,
                );
                let n = l.committed();
                stored = Some((n.excess, n.last));
            }
        }
    }

    #[test]
    fn no_limits_pass() {
        assert_eq!(delay_of(&check(&[], Instant::now())), Some(0));
    }

    #[test]
    fn lru_eviction_at_max_keys() {
        let z = zone("lru", 1000, 3);
        let r = rule("lru", 0, true, 0);
        let req = |ip: u128| {
            check(
                &[ReqCheck {
                    zone: &z,
                    key: LimitKeyValue::Ip(ip),
                    rule: &r,
                }],
                at(&z, 0),
            )
        };
        for ip in 1..=3 {
            assert_eq!(delay_of(&req(ip)), Some(0));
        }
        assert_eq!(z.keys(), 3);
        // A lookup, even a rejected one, marks the key used (NGINX moves it to the queue head).
        assert_eq!(delay_of(&req(1)), None);
        // Key 4 evicts the least recently used key, 2.
        assert_eq!(delay_of(&req(4)), Some(0));
        assert_eq!(z.keys(), 3);
        assert_eq!(delay_of(&req(2)), Some(0), "2 was forgotten, starts afresh");
        // That evicted 3; 1 and 4 are still limited.
        assert_eq!(delay_of(&req(1)), None);
        assert_eq!(delay_of(&req(4)), None);
        assert_eq!(delay_of(&req(3)), Some(0));
    }

    #[test]
    fn memory_stays_bounded_with_many_keys() {
        let z = zone("big", 1000, 10_000);
        assert!(z.shards.len() > 1);
        let r = rule("big", 0, true, 0);
        for ip in 0..50_000u128 {
            let _ = check(
                &[ReqCheck {
                    zone: &z,
                    key: LimitKeyValue::Ip(ip),
                    rule: &r,
                }],
                at(&z, 0),
            );
        }
        assert!(z.keys() <= 10_000, "{} keys", z.keys());
        assert!(z.keys() >= 9_000, "{} keys", z.keys());
    }

    #[test]
    fn idle_drained_keys_expire_like_nginx() {
        let z = zone("exp", 1000, 100);
        let r = rule("exp", 0, true, 0);
        let req = |ip: u128, ms: u64| {
            check(
                &[ReqCheck {
                    zone: &z,
                    key: LimitKeyValue::Ip(ip),
                    rule: &r,
                }],
                at(&z, ms),
            )
        };
        let _ = req(1, 0);
        let _ = req(2, 0);
        let _ = req(3, 30_000);
        // At 61 s, keys 1 and 2 (idle ≥ 60 s, drained) are dropped when a new key arrives.
        let _ = req(4, 61_000);
        assert_eq!(z.keys(), 2);
    }
}
