//! Real `redis-server` processes for integration tests (the gateway's cluster-wide limits, SPEC
//! §10.1; the backend on Redis Cluster, §10.2): a standalone server and a six-node Redis Cluster
//! (three masters, three replicas) on given 127.0.0.1 ports, each in its own temp dir. Every
//! process is a child of the test (no `--daemonize`), killed on drop; every wait is bounded.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` process.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Behind a lock so a node of a shared cluster can be stopped and restarted through `&self`.
    child: std::sync::Mutex<Option<Child>>,
    cluster: bool,
}

fn redis_server_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A free TCP port on 127.0.0.1 for a test's server, never handed out twice in one test binary.
///
/// Drawn below the kernel's ephemeral range (`ip_local_port_range`), which a port from
/// `bind(:0)` is not: any outgoing connection (a service connecting to Redis, a test's client)
/// may take such a port as its source port between the test choosing it and the server binding
/// it, and the server then fails with "Address already in use". The port 10,000 above is free
/// and reserved too, so the port can serve a Redis Cluster node (its cluster bus listens there),
/// and both stay below the ephemeral range.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const BUS_OFFSET: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (lo, hi) = (
        10_000u16,
        ephemeral_start.saturating_sub(BUS_OFFSET).max(10_001),
    );
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let p = rand::random_range(lo..hi);
        let bus = p + BUS_OFFSET;
        if given.contains(&p) || given.contains(&bus) || !bindable(p) || !bindable(bus) {
            continue;
        }
        given.extend([p, bus]);
        return p;
    }
    panic!("no free port in {lo}..{hi} after 10000 tries");
}

/// Runs `redis-cli -p <port> <args>`; returns stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start(free_port: u16) -> RedisServer {
        Self::start_with(free_port, false)
    }

    fn start_with(port: u16, cluster: bool) -> RedisServer {
        let s = RedisServer {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: std::sync::Mutex::new(None),
            cluster,
        };
        s.spawn();
        s
    }

    fn spawn(&self) {
        let mut cmd = Command::new(redis_server_bin());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // A failed master stops only its own slots (Redis' default stops every shard
                // until the replica is promoted); what a deployment that keeps the other shards
                // serving sets, and what SPEC §10.2 asks of the backend.
                "--cluster-require-full-coverage",
                "no",
                "--appendonly",
                "yes",
            ]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        *self.lock() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.cli(&["PING"]).contains("PONG")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn stop(&self) {
        let taken = self.lock().take();
        if let Some(mut c) = taken {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port (and directory).
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    /// SIGSTOP: the server keeps its socket but answers nothing.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// `calls` of one command in `INFO commandstats` (e.g. `evalsha`).
    pub fn command_calls(&self, command: &str) -> u64 {
        command_calls(&self.cli(&["INFO", "commandstats"]), command)
    }
}

/// `calls` of `cmdstat_<command>` in an `INFO commandstats` text.
pub fn command_calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A frozen process must be thawed to die cleanly; SIGKILL works either way.
        self.stop();
    }
}

/// A six-node Redis Cluster: three masters with one replica each.
pub struct RedisCluster {
    /// The nodes, in the order of their ports (the first three start as masters).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes on `ports`, creates the cluster and waits until every slot is served and
    /// every replica is in sync.
    pub fn start(ports: [u16; 6]) -> RedisCluster {
        let nodes: Vec<RedisServer> = ports
            .iter()
            .map(|p| RedisServer::start_with(*p, true))
            .collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes };
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every running node reports `cluster_state:ok` and every running replica's
    /// link to its master is up.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                let repl = n.cli(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node currently master of the slot of `key`.
    pub fn master_of(&self, key: &str) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("a live node");
        let slot: u16 = live
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("slot");
        for (i, n) in self.nodes.iter().enumerate() {
            if n.pid().is_none() {
                continue;
            }
            let role = n.cli(&["INFO", "replication"]);
            if !role.contains("role:master") {
                continue;
            }
            let nodes = n.cli(&["CLUSTER", "NODES"]);
            for line in nodes.lines().filter(|l| l.contains("myself")) {
                for range in line.split_whitespace().skip(8) {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                        if (a..=b).contains(&slot) {
                            return i;
                        }
                    }
                }
            }
        }
        panic!("no master serves slot {slot} of {key}");
    }

    /// Sum of `calls` of `command` over every running node.
    pub fn command_calls(&self, command: &str) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.command_calls(command))
            .sum()
    }
}
