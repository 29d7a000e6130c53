//! `limit_conn`: requests in flight per key, released by an RAII permit.
//!
//! Like NGINX's `ngx_http_limit_conn_module`: a request is rejected when its key already has `max`
//! requests in flight; a key whose count drops to 0 is forgotten. Memory is bounded by the zone's
//! `max_keys`: when the table is full a request with a new key is rejected ([`ConnRejected::ZoneFull`]),
//! as NGINX answers with the limit status when it cannot allocate a node in a full zone. Since only
//! keys with requests in flight are stored, a full table means `max_keys` distinct clients are being
//! served at this very moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::Mutex;

use super::key::{KeyRef, LimitKeyValue, OwnedKey};
use super::req::shard_count;
use crate::config::model::{LimitConnZone, LimitKey};

type Shard = Mutex<HashMap<OwnedKey, u64, ahash::RandomState>>;

/// One `limit_conn` zone: the in-flight count per key, sharded to keep threads apart.
pub struct ConnZone {
    name: Box<str>,
    key: LimitKey,
    max_keys: AtomicUsize,
    shards: Box<[Shard]>,
    shard_hasher: ahash::RandomState,
}

impl std::fmt::Debug for ConnZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnZone")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("max_keys", &self.max_keys.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why [`ConnZone::try_acquire`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnRejected {
    /// The key already has `max` requests in flight.
    #[error("limit_conn zone {zone:?}: {max} requests already in flight for this key")]
    AtLimit {
        /// Zone name.
        zone: String,
        /// The route's `max`.
        max: u64,
    },
    /// The zone already tracks `max_keys` keys with requests in flight.
    #[error("limit_conn zone {zone:?} is full ({max_keys} keys in flight)")]
    ZoneFull {
        /// Zone name.
        zone: String,
        /// The zone's `max_keys`.
        max_keys: usize,
    },
}

impl ConnRejected {
    /// The zone that refused.
    pub fn zone(&self) -> &str {
        match self {
            ConnRejected::AtLimit { zone, .. } | ConnRejected::ZoneFull { zone, .. } => zone,
        }
    }
}

/// One request in flight in a zone; dropping it releases the slot (keep it in the request's CTX).
#[derive(Debug)]
pub struct ConnPermit {
    zone: Arc<ConnZone>,
    key: OwnedKey,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let key = self.key.as_key_ref();
        let mut shard = self.zone.shard_for(key).lock();
        if let Some(count) = shard.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&key);
            }
        }
    }
}

impl ConnPermit {
    /// The zone this permit counts in.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }
}

impl ConnZone {
    /// An empty zone for `cfg`.
    pub fn new(cfg: &LimitConnZone) -> Self {
        let max_keys = cfg.max_keys.max(1);
        let n = shard_count(max_keys, &cfg.key);
        ConnZone {
            name: cfg.name.as_str().into(),
            key: cfg.key.clone(),
            max_keys: AtomicUsize::new(max_keys),
            shards: (0..n)
                .map(|_| Mutex::new(HashMap::with_hasher(ahash::RandomState::new())))
                .collect(),
            shard_hasher: ahash::RandomState::new(),
        }
    }

    /// Whether `cfg` can be applied in place (same key kind).
    pub(crate) fn can_update_in_place(&self, cfg: &LimitConnZone) -> bool {
        self.key == cfg.key
    }

    /// Applies a new `max_keys` (keys already in flight are kept; new keys wait for room).
    pub(crate) fn update(&self, cfg: &LimitConnZone) {
        self.max_keys.store(cfg.max_keys.max(1), Ordering::Relaxed);
    }

    /// Zone name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the zone is keyed on (pass it to [`crate::limit::resolve_key`]).
    pub fn key_spec(&self) -> &LimitKey {
        &self.key
    }

    /// Upper bound of tracked keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    /// Keys with requests in flight and the total of requests in flight (for `/status`).
    pub fn usage(&self) -> (usize, u64) {
        self.shards.iter().fold((0, 0), |(keys, total), s| {
            let s = s.lock();
            (keys + s.len(), total + s.values().sum::<u64>())
        })
    }

    fn shard_for(&self, key: KeyRef<'_>) -> &Shard {
        let i = if self.shards.len() == 1 {
            0
        } else {
            (self.shard_hasher.hash_one(key) as usize) & (self.shards.len() - 1)
        };
        &self.shards[i]
    }

    /// Counts one more request in flight for `key`, unless it already has `max` (then
    /// [`ConnRejected::AtLimit`]) or the key is new and the zone is full ([`ConnRejected::ZoneFull`]).
    ///
    /// For a `dry_run` rule, treat `Err` as "would reject" and go on without a permit (NGINX's
    /// `limit_conn_dry_run` does not count such a request either).
    pub fn try_acquire(
        self: &Arc<Self>,
        key: &LimitKeyValue<'_>,
        max: u64,
    ) -> Result<ConnPermit, ConnRejected> {
        let k = key.as_ref_key();
        let mut shard = self.shard_for(k).lock();
        match shard.get_mut(&k) {
            Some(count) => {
                if *count >= max {
                    return Err(ConnRejected::AtLimit {
                        zone: self.name.to_string(),
                        max,
                    });
                }
                *count += 1;
            }
            None => {
                if max == 0 {
                    return Err(ConnRejected::AtLimit {
                        zone: self.name.to_string(),
                        max,
                    });
                }
                let max_keys = self.max_keys();
                let per_shard = (max_keys / self.shards.len()).max(1);
                if shard.len() >= per_shard {
                    return Err(ConnRejected::ZoneFull {
                        zone: self.name.to_string(),
                        max_keys,
                    });
                }
                shard.insert(k.to_owned_key(), 1);
            }
        }
        drop(shard);
        Ok(ConnPermit {
            zone: Arc::clone(self),
            key: k.to_owned_key(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn zone(max_keys: usize) -> Arc<ConnZone> {
        Arc::new(ConnZone::new(&LimitConnZone {
            name: "conn".to_string(),
            key: LimitKey::ClientIp,
            max_keys,
        }))
    }

    #[test]
    fn rejects_at_max_and_releases_on_drop() {
        let z = zone(100);
        let k = LimitKeyValue::Ip(1);
        let a = z.try_acquire(&k, 2).expect("first");
        let b = z.try_acquire(&k, 2).expect("second");
        assert!(matches!(
            z.try_acquire(&k, 2),
            Err(ConnRejected::AtLimit { max: 2, .. })
        ));
        // Another key is independent.
        let other = z.try_acquire(&LimitKeyValue::Ip(2), 2).expect("other key");
        assert_eq!(z.usage(), (2, 3));
        drop(a);
        let c = z.try_acquire(&k, 2).expect("after release");
        drop((b, c, other));
        assert_eq!(z.usage(), (0, 0), "keys at 0 are removed");
    }

    #[test]
    fn new_keys_rejected_when_zone_full() {
        let z = zone(2);
        let _a = z.try_acquire(&LimitKeyValue::Ip(1), 5).expect("a");
        let b = z.try_acquire(&LimitKeyValue::Ip(2), 5).expect("b");
        let err = z.try_acquire(&LimitKeyValue::Ip(3), 5).expect_err("full");
        assert!(matches!(err, ConnRejected::ZoneFull { max_keys: 2, .. }));
        assert_eq!(err.zone(), "conn");
        // Existing keys still count.
        let _a2 = z
            .try_acquire(&LimitKeyValue::Ip(1), 5)
            .expect("existing key");
        drop(b);
        let _c = z.try_acquire(&LimitKeyValue::Ip(3), 5).expect("room again");
    }

    #[test]
    fn permits_released_under_thread_concurrency() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 2000;
        const MAX: u64 = 3;
        let z = zone(1000);
        let key = LimitKeyValue::Header(b"shared-key");
        let peak = Arc::new(AtomicUsize::new(0));
        let inflight = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (z, peak, inflight, barrier) =
                    (z.clone(), peak.clone(), inflight.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut granted = 0usize;
                    for _ in 0..ROUNDS {
                        if let Ok(permit) = z.try_acquire(&key, MAX) {
                            granted += 1;
                            let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::hint::spin_loop();
                            inflight.fetch_sub(1, Ordering::SeqCst);
                            drop(permit);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert!(granted > 0);
        assert!(
            peak.load(Ordering::SeqCst) as u64 <= MAX,
            "never more than max in flight"
        );
        assert_eq!(z.usage(), (0, 0), "every permit released");
        // All slots are free again.
        let held: Vec<_> = (0..MAX)
            .map(|_| z.try_acquire(&key, MAX).expect("free slot"))
            .collect();
        assert!(z.try_acquire(&key, MAX).is_err());
        drop(held);
    }
}
