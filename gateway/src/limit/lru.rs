//! A bounded map from limit keys to per-key state with least-recently-used eviction.
//!
//! Entries live in one dense `Vec` (no allocation per entry for IP keys) linked into a recency list
//! by `u32` indices; a `hashbrown::HashTable` maps a key's hash to its slot. Lookups take a borrowed
//! [`KeyRef`], so finding a key that is already tracked allocates nothing.

use hashbrown::HashTable;

use super::key::{KeyRef, OwnedKey};

const NIL: u32 = u32::MAX;

/// Largest capacity one map supports (indices are `u32`, `NIL` is reserved).
pub(crate) const MAX_CAPACITY: usize = (u32::MAX - 1) as usize;

struct Slot<V> {
    key: OwnedKey,
    value: V,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// A key → value map holding at most `cap` entries; inserting into a full map evicts the least
/// recently used entry. Every successful lookup through [`KeyLru::get_mut`] marks the entry used.
pub(crate) struct KeyLru<V> {
    table: HashTable<u32>,
    slots: Vec<Slot<V>>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    cap: usize,
    hasher: ahash::RandomState,
}

impl<V> KeyLru<V> {
    /// An empty map for at most `cap` entries (at least 1, at most [`MAX_CAPACITY`]). Callers pass
    /// each key's hash, which must be `hasher.hash_one(key)` (the map rehashes with `hasher`).
    pub(crate) fn new(cap: usize, hasher: ahash::RandomState) -> Self {
        KeyLru {
            table: HashTable::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.clamp(1, MAX_CAPACITY),
            hasher,
        }
    }

    /// Entries tracked.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Changes the capacity, evicting least recently used entries down to it.
    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap.clamp(1, MAX_CAPACITY);
        while self.slots.len() > self.cap {
            self.pop_lru();
        }
        if self.slots.capacity() > self.cap.saturating_mul(2) {
            self.slots.shrink_to(self.cap);
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.table.shrink_to(self.cap, |&i| {
                hasher.hash_one(slots[i as usize].key.as_key_ref())
            });
        }
    }

    /// The hash callers pass along with `key`.
    #[cfg(test)]
    pub(crate) fn hash_of(&self, key: KeyRef<'_>) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, hash: u64, key: KeyRef<'_>) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| slots[i as usize].key.as_key_ref() == key)
            .copied()
    }

    /// The value of `key`, marking it most recently used.
    pub(crate) fn get_mut(&mut self, hash: u64, key: KeyRef<'_>) -> Option<&mut V> {
        let idx = self.find(hash, key)?;
        if self.head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
        Some(&mut self.slots[idx as usize].value)
    }

    /// The value of `key` without changing its recency.
    #[cfg(test)]
    pub(crate) fn peek(&self, key: KeyRef<'_>) -> Option<&V> {
        self.find(self.hash_of(key), key)
            .map(|i| &self.slots[i as usize].value)
    }

    /// The least recently used entry.
    pub(crate) fn peek_lru(&self) -> Option<(&OwnedKey, &V)> {
        let slot = self.slots.get(self.tail as usize)?;
        Some((&slot.key, &slot.value))
    }

    /// Inserts `key`, which must not be present, as the most recently used entry; when the map is
    /// full the least recently used entry is evicted and returned.
    pub(crate) fn insert_new(
        &mut self,
        hash: u64,
        key: KeyRef<'_>,
        value: V,
    ) -> Option<(OwnedKey, V)> {
        let evicted = if self.slots.len() >= self.cap {
            self.pop_lru()
        } else {
            None
        };
        let idx = self.slots.len() as u32;
        self.slots.push(Slot {
            key: key.to_owned_key(),
            value,
            prev: NIL,
            next: NIL,
        });
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(hash, idx, |&i| {
            hasher.hash_one(slots[i as usize].key.as_key_ref())
        });
        self.push_front(idx);
        evicted
    }

    /// Removes `key`, returning its value.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, key: KeyRef<'_>) -> Option<V> {
        let idx = self.find(self.hash_of(key), key)?;
        Some(self.remove_at(idx).1)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_lru(&mut self) -> Option<(OwnedKey, V)> {
        if self.tail == NIL {
            return None;
        }
        Some(self.remove_at(self.tail))
    }

    /// Removes every entry, yielding them from least to most recently used.
    pub(crate) fn drain_lru_first(&mut self) -> impl Iterator<Item = (OwnedKey, V)> + '_ {
        std::iter::from_fn(move || self.pop_lru())
    }

    fn remove_at(&mut self, idx: u32) -> (OwnedKey, V) {
        self.unlink(idx);
        let hash = self
            .hasher
            .hash_one(self.slots[idx as usize].key.as_key_ref());
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        let last = (self.slots.len() - 1) as u32;
        let slot = self.slots.swap_remove(idx as usize);
        if idx != last {
            // The former last slot now lives at `idx`: repoint the table and its neighbours.
            let moved = &self.slots[idx as usize];
            let moved_hash = self.hasher.hash_one(moved.key.as_key_ref());
            let (prev, next) = (moved.prev, moved.next);
            if let Some(i) = self.table.find_mut(moved_hash, |&i| i == last) {
                *i = idx;
            }
            if prev == NIL {
                self.head = idx;
            } else {
                self.slots[prev as usize].next = idx;
            }
            if next == NIL {
                self.tail = idx;
            } else {
                self.slots[next as usize].prev = idx;
            }
        }
        (slot.key, slot.value)
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[idx as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, idx: u32) {
        let old_head = self.head;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = NIL;
            s.next = old_head;
        }
        if old_head == NIL {
            self.tail = idx;
        } else {
            self.slots[old_head as usize].prev = idx;
        }
        self.head = idx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_lru_first(m: &mut KeyLru<u32>) -> Vec<(u128, u32)> {
        let mut out = Vec::new();
        while let Some((k, v)) = m.pop_lru() {
            match k {
                OwnedKey::Ip(ip) => out.push((ip, v)),
                OwnedKey::Bytes(_) => panic!("unexpected bytes key"),
            }
        }
        out
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut m = KeyLru::new(3, ahash::RandomState::new());
        for i in 0..3u128 {
            assert!(m
                .insert_new(m.hash_of(KeyRef::Ip(i)), KeyRef::Ip(i), i as u32)
                .is_none());
        }
        // Touch 0 so 1 becomes the least recently used.
        assert_eq!(
            m.get_mut(m.hash_of(KeyRef::Ip(0)), KeyRef::Ip(0)).copied(),
            Some(0)
        );
        let evicted = m.insert_new(m.hash_of(KeyRef::Ip(3)), KeyRef::Ip(3), 3);
        assert!(matches!(evicted, Some((OwnedKey::Ip(1), 1))));
        assert_eq!(m.len(), 3);
        assert!(m.peek(KeyRef::Ip(1)).is_none());
        assert_eq!(keys_lru_first(&mut m), vec![(2, 2), (0, 0), (3, 3)]);
    }

    #[test]
    fn remove_keeps_links_and_table_consistent() {
        let mut m = KeyLru::new(100, ahash::RandomState::new());
        for i in 0..50u128 {
            m.insert_new(m.hash_of(KeyRef::Ip(i)), KeyRef::Ip(i), i as u32);
        }
        for i in (0..50u128).step_by(3) {
            assert_eq!(m.remove(KeyRef::Ip(i)), Some(i as u32));
        }
        for i in 0..50u128 {
            assert_eq!(m.peek(KeyRef::Ip(i)).is_some(), i % 3 != 0, "key {i}");
        }
        let order: Vec<u128> = keys_lru_first(&mut m).into_iter().map(|(k, _)| k).collect();
        let expected: Vec<u128> = (0..50u128).filter(|i| i % 3 != 0).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn bytes_keys_and_shrinking() {
        let mut m = KeyLru::new(10, ahash::RandomState::new());
        for i in 0..10u32 {
            let k = format!("key-{i}");
            m.insert_new(
                m.hash_of(KeyRef::Bytes(k.as_bytes())),
                KeyRef::Bytes(k.as_bytes()),
                i,
            );
        }
        assert_eq!(
            m.get_mut(m.hash_of(KeyRef::Bytes(b"key-0")), KeyRef::Bytes(b"key-0"))
                .copied(),
            Some(0)
        );
        m.set_cap(2);
        assert_eq!(m.len(), 2);
        assert!(m.peek(KeyRef::Bytes(b"key-0")).is_some());
        assert!(m.peek(KeyRef::Bytes(b"key-9")).is_some());
        assert!(m.peek(KeyRef::Bytes(b"key-5")).is_none());
    }
}
