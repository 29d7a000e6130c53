//! Where keys live on a Redis Cluster (SPEC §10.2): the backend's keys are laid out in
//! [`GROUPS`] *slot groups*. Group `g` owns the `g`-th equal share of the 16,384 hash slots and
//! has one hash tag ([`group_tag`]) whose slot lies in the middle of that share, so the groups
//! spread evenly over the masters of any cluster whose masters own contiguous, roughly equal
//! slot ranges (what `redis-cli --cluster create` makes for 1, 2, 3, 4, 6 or 12 masters).
//!
//! Everything a saga script touches shares its event's group tag: the event's inventory, its
//! reservations, and the per-group indexes (holds, sagas, user index, outbox stream). So every
//! script is single-slot, one hot event stays on one shard, and events spread over the shards by
//! the hash of their id. A reservation id is drawn so that its own slot falls in its event's
//! group ([`new_id_in_group`]): the id alone finds its keys, without a lookup or a scan, and it
//! stays a plain 32-hex-digit id.
//!
//! The same layout is used on a standalone Redis (one node holds every group), so both modes run
//! one code path.

use std::sync::LazyLock;

/// Slot groups. 12 divides evenly among 1, 2, 3, 4, 6 and 12 masters.
pub const GROUPS: usize = 12;

/// Hash slots of Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// A slot group, `0..GROUPS`.
pub type Group = usize;

/// The hash slot Redis Cluster computes for `key`: CRC16 (XMODEM) of the key's hash tag (the
/// first non-empty `{…}`) or of the whole key, modulo 16,384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// The group whose share of the slot space holds `slot`.
pub fn group_of_slot(slot: u16) -> Group {
    usize::from(slot) * GROUPS / usize::from(SLOTS)
}

/// The group of a key (by its slot).
pub fn group_of_key(key: &str) -> Group {
    group_of_slot(key_slot(key))
}

/// The group of an identifier (event id or reservation id): the group of its own slot.
pub fn group_of_id(id: &str) -> Group {
    group_of_key(id)
}

/// The hash tag (without braces) of group `g`; `g` is taken modulo [`GROUPS`].
pub fn group_tag(g: Group) -> &'static str {
    &TAGS[g % GROUPS]
}

/// Tags found once: for each group the first `g<g>.<k>` whose slot lies in the middle half of
/// the group's share (deterministic, so every process and version agrees).
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| (0..GROUPS).map(find_tag).collect());

fn find_tag(g: Group) -> String {
    let share = usize::from(SLOTS) / GROUPS;
    let (lo, hi) = (g * share + share / 4, g * share + 3 * share / 4);
    (0u32..)
        .map(|k| format!("g{g}.{k}"))
        .find(|t| (lo..hi).contains(&usize::from(key_slot(t))))
        .unwrap_or_else(|| unreachable!("CRC16 covers every slot range"))
}

/// A fresh random 32-hex-digit id whose slot falls in group `g` (about [`GROUPS`] draws, each
/// written on the stack: only the id kept is allocated).
pub fn new_id_in_group(g: Group) -> String {
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    loop {
        let id = uuid::Uuid::new_v4().simple().encode_lower(&mut text);
        if group_of_id(id) == g % GROUPS {
            return id.to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(
            key_slot("{}x"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}x") % SLOTS
        );
    }

    #[test]
    fn every_group_tag_lies_in_its_share() {
        for g in 0..GROUPS {
            let tag = group_tag(g);
            assert_eq!(group_of_key(&format!("x:{{{tag}}}:y")), g, "{tag}");
        }
    }

    #[test]
    fn ids_are_drawn_into_their_group() {
        for g in 0..GROUPS {
            let id = new_id_in_group(g);
            assert_eq!(id.len(), 32);
            assert_eq!(group_of_id(&id), g);
        }
    }

    #[test]
    fn three_masters_get_four_groups_each() {
        // `redis-cli --cluster create` with three masters: 0-5460, 5461-10922, 10923-16383.
        let mut per_master = [0; 3];
        for g in 0..GROUPS {
            let slot = key_slot(group_tag(g));
            per_master[usize::from(slot > 5460) + usize::from(slot > 10922)] += 1;
        }
        assert_eq!(per_master, [4, 4, 4]);
    }
}
