//! A bounded map from limit keys to per-key state that evicts keys which have not been used for a
//! long time: an approximate least-recently-used map (see [`KeyLru`] for the exact bound).
//!
//! Entries live in one dense `Vec` (no allocation per entry for IP keys); a `hashbrown::HashTable`
//! maps a key's hash to its slot. Lookups take a borrowed [`KeyRef`], so finding a key that is
//! already tracked allocates nothing. A hit writes only to its own slot: there is no recency list
//! to relink, which at 100k keys cost three cache misses on other slots per lookup.

use std::cmp::Reverse;

use hashbrown::HashTable;

use super::key::{KeyRef, OwnedKey};

/// Largest capacity one map supports (slot indices are `u32`).
pub(crate) const MAX_CAPACITY: usize = (u32::MAX - 1) as usize;

/// Most slots one [`KeyLru::expire`] examines.
const EXPIRY_STEPS: usize = 8;

/// One tracked key. 64 bytes for IP keys and a 16-byte value: one cache line per hit.
struct Slot<V> {
    key: OwnedKey,
    value: V,
    /// The key's hash as the caller gave it, so that removals and table growth never rehash.
    hash: u64,
    /// The map's use counter when the key was last inserted or found.
    used: u64,
}

/// A key → value map holding at most `cap` entries, evicting a long-unused entry when full.
///
/// **Recency without a list.** Every insert and every successful lookup ([`KeyLru::get_mut`],
/// [`KeyLru::find`]) stamps its entry with the map's use counter and advances the counter, so
/// stamps are distinct. An entry's *age* is the number of uses of the map since its own last use.
/// With `n` entries the `j`-th most recently used one has age ≥ `j`, hence at least `⌊n/8⌋ + 1`
/// entries have age ≥ `n − ⌊n/8⌋` (the eviction age).
///
/// **Eviction** (insert into a full map) sweeps a hand over the slots, like CLOCK, and evicts the
/// first entry at least the eviction age old; the new key takes its slot. Hence:
/// - the map never holds more than `cap` entries: a full map evicts exactly one per new key;
/// - an evicted key was not used during the last `n − ⌊n/8⌋` uses of its map. Exact LRU (NGINX)
///   evicts the key unused for longest; ours may evict another one instead, but only a key idle
///   for at least that many uses (with fewer than 8 entries: at least `n` uses, as many as there
///   are entries). Where the two differ, both choices are keys idle that long;
/// - eviction never changes the state of a key that stays tracked, so every tracked key's
///   decisions are exactly those NGINX would take with the same keys tracked.
///
/// Since at least an eighth of the entries qualify, a sweep usually reads a few consecutive
/// slots; it never reads more than `n` (then it takes the oldest entry it saw).
///
/// **Expiry** ([`KeyLru::expire`]) mirrors NGINX's look at its two least recently used nodes
/// with a second hand: it removes up to two entries that are at least the eviction age minus one
/// old (NGINX's second-to-last node has age ≥ `n − 2`) and that the caller's predicate accepts,
/// so an expired key, too, was idle for that long.
pub(crate) struct KeyLru<V> {
    table: HashTable<u32>,
    slots: Vec<Slot<V>>,
    /// The next slot the eviction sweep looks at (taken modulo `slots.len()`).
    hand: usize,
    /// The slot expiry looks at first (taken modulo `slots.len()`). Its own hand, so that expiry
    /// waiting on an entry, or passing over young ones, does not disturb the eviction sweep.
    expiry_hand: usize,
    /// Uses so far: the next use's stamp.
    clock: u64,
    cap: usize,
}

impl<V> KeyLru<V> {
    /// An empty map for at most `cap` entries (at least 1, at most [`MAX_CAPACITY`]). Callers pass
    /// each key's hash along with it; it must be the same function of the key on every call.
    pub(crate) fn new(cap: usize) -> Self {
        KeyLru {
            table: HashTable::new(),
            slots: Vec::new(),
            hand: 0,
            expiry_hand: 0,
            clock: 0,
            cap: cap.clamp(1, MAX_CAPACITY),
        }
    }

    /// Entries tracked.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Changes the capacity, evicting the least recently used entries (exactly) down to it.
    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap.clamp(1, MAX_CAPACITY);
        if self.slots.len() > self.cap {
            self.slots.sort_unstable_by_key(|s| Reverse(s.used));
            self.slots.truncate(self.cap);
            self.rebuild_table();
        }
        if self.slots.capacity() > self.cap.saturating_mul(2) {
            self.slots.shrink_to(self.cap);
            let slots = &self.slots;
            self.table.shrink_to(self.cap, |&i| slots[i as usize].hash);
        }
    }

    /// Re-indexes every slot after the slots were reordered.
    fn rebuild_table(&mut self) {
        self.table.clear();
        self.hand = 0;
        self.expiry_hand = 0;
        let (table, slots) = (&mut self.table, &self.slots);
        for (i, s) in slots.iter().enumerate() {
            table.insert_unique(s.hash, i as u32, |&j| slots[j as usize].hash);
        }
    }

    /// The slot holding `key`, if it is tracked (nothing marked).
    fn slot_of(&self, hash: u64, key: KeyRef<'_>) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| slots[i as usize].key.as_key_ref() == key)
            .copied()
    }

    /// The slot of `key`, marking it used; pass the slot to [`KeyLru::value_at`].
    pub(crate) fn find(&mut self, hash: u64, key: KeyRef<'_>) -> Option<u32> {
        let idx = self.slot_of(hash, key)?;
        let slot = &mut self.slots[idx as usize];
        slot.used = self.clock;
        self.clock += 1;
        Some(idx)
    }

    /// The value in slot `idx` as returned by [`KeyLru::find`] for a key of hash `hash`, if the
    /// slot still holds that key (no insert or removal in between); does not mark it used.
    pub(crate) fn value_at(&mut self, idx: u32, hash: u64) -> Option<&mut V> {
        self.slots
            .get_mut(idx as usize)
            .filter(|s| s.hash == hash)
            .map(|s| &mut s.value)
    }

    /// The value of `key`, marking it used.
    pub(crate) fn get_mut(&mut self, hash: u64, key: KeyRef<'_>) -> Option<&mut V> {
        let idx = self.find(hash, key)?;
        Some(&mut self.slots[idx as usize].value)
    }

    /// The value of `key` without marking it used.
    #[cfg(test)]
    pub(crate) fn peek(&self, hash: u64, key: KeyRef<'_>) -> Option<&V> {
        let idx = self.slot_of(hash, key)?;
        Some(&self.slots[idx as usize].value)
    }

    /// The age an entry must have to be evicted from a map of the current size (see [`KeyLru`]).
    fn eviction_age(&self) -> u64 {
        let n = self.slots.len() as u64;
        n - n / 8
    }

    /// Inserts `key`, which must not be present, as the most recently used entry; when the map is
    /// full a long-unused entry (see [`KeyLru`]) is evicted and returned.
    pub(crate) fn insert_new(
        &mut self,
        hash: u64,
        key: KeyRef<'_>,
        value: V,
    ) -> Option<(OwnedKey, V)> {
        let slot = Slot {
            key: key.to_owned_key(),
            value,
            hash,
            used: self.clock,
        };
        // The victim is chosen before the clock advances: ages as of the previous use.
        let evicted = if self.slots.len() >= self.cap {
            let victim = self.victim();
            self.unindex(victim);
            let old = std::mem::replace(&mut self.slots[victim], slot);
            self.index(victim);
            Some((old.key, old.value))
        } else {
            self.slots.push(slot);
            self.index(self.slots.len() - 1);
            None
        };
        self.clock += 1;
        evicted
    }

    /// The slot to evict from a non-empty map: the first at least [`Self::eviction_age`] old from
    /// the hand on, which then moves past it.
    fn victim(&mut self) -> usize {
        let n = self.slots.len();
        let min_age = self.eviction_age();
        let mut i = if self.hand < n { self.hand } else { 0 };
        // At least one entry qualifies (see `KeyLru`); the oldest seen is only a safety net.
        let mut oldest = i;
        for _ in 0..n {
            let used = self.slots[i].used;
            if self.clock - used >= min_age {
                oldest = i;
                break;
            }
            if used < self.slots[oldest].used {
                oldest = i;
            }
            i = if i + 1 < n { i + 1 } else { 0 };
        }
        self.hand = oldest + 1;
        oldest
    }

    /// Adds slot `idx` to the table.
    fn index(&mut self, idx: usize) {
        let slots = &self.slots;
        self.table
            .insert_unique(slots[idx].hash, idx as u32, |&i| slots[i as usize].hash);
    }

    /// Removes slot `idx` from the table.
    fn unindex(&mut self, idx: usize) {
        let want = idx as u32;
        if let Ok(entry) = self.table.find_entry(self.slots[idx].hash, |&i| i == want) {
            entry.remove();
        }
    }

    /// Removes the entry in slot `idx`; the last slot moves into its place.
    fn remove_at(&mut self, idx: usize) -> (OwnedKey, V) {
        self.unindex(idx);
        let last = self.slots.len() - 1;
        let slot = self.slots.swap_remove(idx);
        if idx != last {
            let (moved, from) = (self.slots[idx].hash, last as u32);
            if let Some(i) = self.table.find_mut(moved, |&i| i == from) {
                *i = idx as u32;
            }
        }
        (slot.key, slot.value)
    }

    /// NGINX's lazy expiry of up to two least recently used entries (`ngx_http_limit_req_expire`
    /// with `n = 1`). NGINX looks at the tail of its recency queue: it removes the tail node if
    /// `expired` holds for it and looks at the next one, and stops at the first node it may not
    /// remove. Here the expiry hand plays the tail: an entry younger than the eviction age minus
    /// one is no tail candidate and is passed over (at most [`EXPIRY_STEPS`] slots are examined);
    /// an old enough entry is removed if `expired` holds (its slot then holds the former last
    /// entry, examined next), else the walk stops with the hand on it, as NGINX stays on its tail
    /// until that node expires or is used. Returns how many entries were removed.
    pub(crate) fn expire(&mut self, mut expired: impl FnMut(&V) -> bool) -> usize {
        // Ages as of the map the new key arrives in, like NGINX's queue at that moment.
        let min_age = self.eviction_age().saturating_sub(1);
        let mut removed = 0;
        for _ in 0..EXPIRY_STEPS {
            let n = self.slots.len();
            if n == 0 || removed == 2 {
                break;
            }
            let i = if self.expiry_hand < n {
                self.expiry_hand
            } else {
                0
            };
            self.expiry_hand = i;
            let s = &self.slots[i];
            if self.clock - s.used < min_age {
                self.expiry_hand = i + 1;
            } else if expired(&s.value) {
                self.remove_at(i);
                removed += 1;
            } else {
                break;
            }
        }
        removed
    }

    /// Removes the entry of `key`, returning its value.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, hash: u64, key: KeyRef<'_>) -> Option<V> {
        let idx = self.slot_of(hash, key)?;
        Some(self.remove_at(idx as usize).1)
    }

    /// Removes every entry, least recently used first.
    pub(crate) fn drain_lru_first(&mut self) -> Vec<(OwnedKey, V)> {
        let mut slots = std::mem::take(&mut self.slots);
        self.table.clear();
        self.hand = 0;
        self.expiry_hand = 0;
        slots.sort_unstable_by_key(|s| s.used);
        slots.into_iter().map(|s| (s.key, s.value)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map with its own hasher.
    struct Map {
        m: KeyLru<u32>,
        h: ahash::RandomState,
    }

    impl Map {
        fn new(cap: usize) -> Self {
            Map {
                m: KeyLru::new(cap),
                h: ahash::RandomState::new(),
            }
        }
        fn insert(&mut self, k: u128, v: u32) -> Option<(OwnedKey, u32)> {
            self.m
                .insert_new(self.h.hash_one(KeyRef::Ip(k)), KeyRef::Ip(k), v)
        }
        fn get(&mut self, k: u128) -> Option<u32> {
            self.m
                .get_mut(self.h.hash_one(KeyRef::Ip(k)), KeyRef::Ip(k))
                .copied()
        }
        fn peek(&self, k: u128) -> Option<u32> {
            self.m
                .peek(self.h.hash_one(KeyRef::Ip(k)), KeyRef::Ip(k))
                .copied()
        }
        fn remove(&mut self, k: u128) -> Option<u32> {
            self.m.remove(self.h.hash_one(KeyRef::Ip(k)), KeyRef::Ip(k))
        }
        fn drain(&mut self) -> Vec<(u128, u32)> {
            self.m
                .drain_lru_first()
                .into_iter()
                .map(|(k, v)| match k {
                    OwnedKey::Ip(ip) => (ip, v),
                    OwnedKey::Bytes(_) => panic!("unexpected bytes key"),
                })
                .collect()
        }
    }

    fn ip(k: &OwnedKey) -> u128 {
        match k {
            OwnedKey::Ip(ip) => *ip,
            OwnedKey::Bytes(_) => panic!("unexpected bytes key"),
        }
    }

    /// xorshift64, for reproducible random operation sequences.
    fn rand(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot<[u64; 2]>>(), 64);
    }

    #[test]
    fn small_maps_evict_the_least_recently_used() {
        let mut m = Map::new(3);
        for i in 0..3u128 {
            assert!(m.insert(i, i as u32).is_none());
        }
        // Use 0 so 1 becomes the least recently used.
        assert_eq!(m.get(0), Some(0));
        let evicted = m.insert(3, 3);
        assert!(matches!(evicted, Some((OwnedKey::Ip(1), 1))));
        assert_eq!(m.m.len(), 3);
        assert!(m.peek(1).is_none());
        assert_eq!(m.drain(), vec![(2, 2), (0, 0), (3, 3)]);
    }

    #[test]
    fn remove_keeps_the_table_consistent() {
        let mut m = Map::new(100);
        for i in 0..50u128 {
            m.insert(i, i as u32);
        }
        for i in (0..50u128).step_by(3) {
            assert_eq!(m.remove(i), Some(i as u32));
        }
        for i in 0..50u128 {
            assert_eq!(m.peek(i).is_some(), i % 3 != 0, "key {i}");
        }
        let order: Vec<u128> = m.drain().into_iter().map(|(k, _)| k).collect();
        let expected: Vec<u128> = (0..50u128).filter(|i| i % 3 != 0).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn bytes_keys_and_shrinking_keep_the_most_recent() {
        let h = ahash::RandomState::new();
        let mut m = KeyLru::new(10);
        for i in 0..10u32 {
            let k = format!("key-{i}");
            let key = KeyRef::Bytes(k.as_bytes());
            m.insert_new(h.hash_one(key), key, i);
        }
        let k0 = KeyRef::Bytes(b"key-0");
        assert_eq!(m.get_mut(h.hash_one(k0), k0).copied(), Some(0));
        m.set_cap(2);
        assert_eq!(m.len(), 2);
        assert!(m.peek(h.hash_one(k0), k0).is_some());
        let k9 = KeyRef::Bytes(b"key-9");
        assert!(m.peek(h.hash_one(k9), k9).is_some());
        let k5 = KeyRef::Bytes(b"key-5");
        assert!(m.peek(h.hash_one(k5), k5).is_none());
    }

    #[test]
    fn a_flood_of_new_keys_keeps_the_bound_and_the_recently_used() {
        let mut m = Map::new(1000);
        for i in 0..1000u128 {
            m.insert(i, 0);
        }
        // Keys 0..100 stay busy while 100k new keys flood in.
        for i in 0..100_000u128 {
            if i % 8 == 0 {
                for hot in 0..100u128 {
                    assert_eq!(m.get(hot), Some(0), "hot key {hot} evicted at {i}");
                }
            }
            let evicted = m.insert(1_000_000 + i, 1);
            let k = evicted.map(|(k, _)| ip(&k));
            assert!(k.is_some_and(|k| k >= 100), "evicted {k:?}");
            assert_eq!(m.m.len(), 1000);
        }
    }

    #[test]
    fn idle_entries_are_evicted_before_recently_used_ones() {
        let mut m = Map::new(64);
        for i in 0..64u128 {
            m.insert(i, 0);
        }
        // Use 0..48 again: 48..64 are the 16 idle ones (ages ≥ 49 > 56 after a few inserts).
        for i in 0..48u128 {
            m.get(i);
        }
        let mut evicted = Vec::new();
        for i in 0..8u128 {
            evicted.extend(m.insert(100 + i, 1).map(|(k, _)| ip(&k)));
        }
        assert_eq!(evicted.len(), 8);
        assert!(
            evicted.iter().all(|&k| (48..64).contains(&k)),
            "{evicted:?}"
        );
    }

    /// Random operations against a model that records each key's last use: the bound holds, values
    /// are never mixed up, and every evicted key was idle for at least the eviction age.
    #[test]
    fn random_operations_agree_with_a_model() {
        let mut state = 0x1234_5678_9abc_def1u64;
        for cap in [1usize, 2, 3, 7, 8, 9, 64, 500] {
            let mut m = Map::new(cap);
            let mut model: std::collections::HashMap<u128, (u32, u64)> = Default::default();
            let mut clock = 0u64;
            for step in 0..20_000u32 {
                let k = u128::from(rand(&mut state) % (cap as u64 * 3));
                match rand(&mut state) % 8 {
                    0 => {
                        // A removal, as expiry does.
                        assert_eq!(m.remove(k), model.remove(&k).map(|(v, _)| v));
                    }
                    1 => {
                        let n = model.len() as u64;
                        let removed = m.m.expire(|v| v % 2 == 0);
                        assert!(removed <= 2);
                        model.retain(|k, (v, used)| {
                            let kept = m.peek(*k).is_some();
                            if !kept {
                                assert!(*v % 2 == 0);
                                assert!(clock - *used >= (n - n / 8).saturating_sub(1));
                            }
                            kept
                        });
                    }
                    _ => match model.get_mut(&k) {
                        Some((v, used)) => {
                            assert_eq!(m.get(k), Some(*v), "cap {cap} step {step}");
                            *used = clock;
                            clock += 1;
                        }
                        None => {
                            assert_eq!(m.get(k), None);
                            let n = model.len() as u64;
                            let evicted = m.insert(k, step);
                            if n as usize >= cap {
                                let (ek, ev) = evicted.expect("a full map evicts");
                                let (mv, mused) = model.remove(&ip(&ek)).expect("tracked");
                                assert_eq!(ev, mv);
                                assert!(clock - mused >= n - n / 8, "cap {cap} step {step}");
                            } else {
                                assert!(evicted.is_none());
                            }
                            model.insert(k, (step, clock));
                            clock += 1;
                        }
                    },
                }
                assert_eq!(m.m.len(), model.len());
                assert!(m.m.len() <= cap);
            }
        }
    }

    #[test]
    fn expiry_passes_young_entries_and_waits_like_nginx_on_an_old_one_it_may_not_remove() {
        let mut m = Map::new(100);
        for i in 0..10u128 {
            m.insert(i, i as u32);
        }
        m.get(0);
        m.get(1);
        // 10 entries: old enough from age 8 on. Ages now: 0 → 2, 1 → 1, k ≥ 2 → 12 − k.
        // 0 and 1 are passed over, 2 is removed (9 takes its slot and is passed over), 3 is old
        // but refused: the walk stops there.
        assert_eq!(m.m.expire(|v| *v != 3), 1);
        assert_eq!(m.peek(2), None);
        assert_eq!(m.m.len(), 9);
        // The hand waited on 3: removed next, then 4 (9 entries: old enough from age 7 on).
        assert_eq!(m.m.expire(|_| true), 2);
        let left: Vec<u128> = m.drain().into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![5, 6, 7, 8, 9, 0, 1]);
    }

    #[test]
    fn expiry_does_not_move_the_eviction_hand() {
        let mut m = Map::new(4);
        for i in 0..4u128 {
            m.insert(i, 0);
        }
        // Expiry refuses everything; eviction still takes the least recently used, 0.
        for _ in 0..3 {
            assert_eq!(m.m.expire(|_| false), 0);
        }
        let evicted = m.insert(4, 0).map(|(k, _)| ip(&k));
        assert_eq!(evicted, Some(0));
    }

    #[test]
    fn expiry_sweeps_the_whole_map_over_successive_new_keys() {
        let mut m = Map::new(2000);
        for i in 0..1000u128 {
            m.insert(i, 0);
        }
        // A busy key among idle ones: as new keys arrive (each expiring up to two like NGINX),
        // every idle old key is expired in time and the busy one (value 7: never expirable, like
        // a key that is not idle) stays.
        if let Some(v) = m.m.get_mut(m.h.hash_one(KeyRef::Ip(500)), KeyRef::Ip(500)) {
            *v = 7;
        }
        for new in 0..1000u128 {
            for _ in 0..3 {
                m.get(500);
            }
            m.m.expire(|v| *v != 7);
            m.insert(10_000 + new, 1);
        }
        let old: Vec<u128> = (0..1000u128).filter(|&k| m.peek(k).is_some()).collect();
        assert_eq!(old, vec![500]);
    }
}
