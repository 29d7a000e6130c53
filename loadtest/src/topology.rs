//! Redis Cluster topology as `CLUSTER NODES` reports it, and Redis's key-to-slot hash.
//!
//! The `shard-failover` scenario needs to know which master serves an event's slot, which replica
//! will take over, and when it did.

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Node id (40 hex characters).
    pub id: String,
    /// `ip:port` clients use (the cluster-bus port and hostname removed).
    pub addr: String,
    /// Announced hostname (`cluster-announce-hostname`), if any.
    pub hostname: Option<String>,
    /// Flags: `myself`, `master`, `slave`, `fail`, `fail?`, `handshake`, `noaddr`, ...
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges served, inclusive (migrating/importing markers are left out).
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    /// Whether a flag is set.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A master that no node considers failed (not even `fail?`).
    pub fn is_live_master(&self) -> bool {
        self.has("master") && !self.has("fail") && !self.has("fail?")
    }

    /// Whether it lists `slot` among its ranges.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    /// The port of [`Node::addr`].
    pub fn port(&self) -> Option<u16> {
        self.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }
}

fn slot_range(s: &str) -> Option<(u16, u16)> {
    if s.starts_with('[') {
        return None; // [slot->-id] / [slot-<-id]: a migration in progress, not served yet
    }
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
    (a <= b && b < SLOTS).then_some((a, b))
}

/// Parses the text of `CLUSTER NODES`; malformed lines are skipped.
pub fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let (addr_part, hostname) = match f[1].split_once(',') {
                Some((a, h)) if !h.is_empty() => (a, Some(h.to_owned())),
                Some((a, _)) => (a, None),
                None => (f[1], None),
            };
            let addr = addr_part.split('@').next().unwrap_or(addr_part).to_owned();
            Some(Node {
                id: f[0].to_owned(),
                addr,
                hostname,
                flags: f[2].split(',').map(str::to_owned).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots: f[8..].iter().filter_map(|s| slot_range(s)).collect(),
            })
        })
        .collect()
}

/// The live master serving `slot`, if any.
pub fn owner(nodes: &[Node], slot: u16) -> Option<&Node> {
    nodes.iter().find(|n| n.is_live_master() && n.serves(slot))
}

/// The replicas of master `id`.
pub fn replicas_of<'a>(nodes: &'a [Node], id: &str) -> Vec<&'a Node> {
    nodes
        .iter()
        .filter(|n| n.master_id.as_deref() == Some(id))
        .collect()
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key: only the first non-empty `{…}` is hashed, as Redis does.
pub fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let hashed = b
        .iter()
        .position(|c| *c == b'{')
        .and_then(|open| {
            let rest = &b[open + 1..];
            rest.iter()
                .position(|c| *c == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(b);
    crc16(hashed) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,redis-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,redis-2 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003,redis-3 master,fail - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006,redis-6 master 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001,redis-1 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
bad line
";

    #[test]
    fn parses_cluster_nodes() {
        let nodes = parse_nodes(NODES);
        assert_eq!(nodes.len(), 6);
        let one = &nodes[5];
        assert_eq!(one.addr, "127.0.0.1:30001");
        assert_eq!(one.hostname.as_deref(), Some("redis-1"));
        assert_eq!(one.port(), Some(30001));
        assert_eq!(one.slots, vec![(0, 5460)]);
        assert!(one.has("myself") && one.is_live_master());
        assert_eq!(nodes[3].hostname, None);
        assert_eq!(
            owner(&nodes, 0).map(|n| n.addr.as_str()),
            Some("127.0.0.1:30001")
        );
        assert_eq!(owner(&nodes, 6000).map(|n| n.port()), Some(Some(30002)));
        // The failed master still lists its slots but serves nothing.
        assert_eq!(owner(&nodes, 16000), None);
        let reps = replicas_of(&nodes, &one.id);
        assert_eq!(reps.len(), 1);
        assert_eq!(reps[0].hostname.as_deref(), Some("redis-4"));
    }

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert!(key_slot("") < SLOTS);
    }
}
