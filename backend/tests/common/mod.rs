//! Test harness: real redis-server and real `backend` processes on free loopback ports.
//! Every process is killed when its handle drops, so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a test's server (see [`redis_harness::free_port`]: below the
/// ephemeral range, never the same twice in one test binary).
pub fn free_port() -> u16 {
    redis_harness::free_port()
}

/// Waits until something accepts TCP connections on `port`, up to `timeout`.
///
/// A connection whose local and peer addresses are the same is not an answer: with nobody
/// listening yet, a connect to a port in the ephemeral range can pick that very port as its source
/// and connect to itself (TCP simultaneous open), which once let a test talk to a redis-server
/// that was not up yet.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            if s.local_addr().ok() != s.peer_addr().ok() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until a redis-server on `port` answers `PING` with `+PONG`, up to `timeout`; false at
/// once if `child` exited (it could not bind the port).
fn wait_for_redis(port: u16, child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut reply).is_ok()
                && &reply == b"+PONG\r\n"
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A real redis-server on a free port, without persistence, in its own temp dir.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server (must be on PATH) and waits until it accepts connections.
    /// A port it cannot bind (taken meanwhile, e.g. as the source port of some connection) is
    /// replaced by another.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            port: free_port(),
            child: None,
            dir,
        };
        for _ in 0..5 {
            if server.try_spawn() {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server did not start on 5 ports in a row");
    }

    /// Starts the server on `self.port`; false (and nothing running) if it does not answer.
    fn try_spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found on PATH (apt-get install redis-server)");
        if wait_for_redis(self.port, &mut child, Duration::from_secs(10)) {
            self.child = Some(child);
            return true;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server did not start on port {}",
            self.port
        );
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (SIGKILL): the data is gone, like a crashed instance without persistence.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP) so commands hang, as on a network partition.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.stop();
    }
}

/// Path of the `backend` binary Cargo built for this test run.
pub fn backend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backend"))
}

/// A running `backend <subcommand>` process.
pub struct BackendProcess {
    pub port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
}

impl BackendProcess {
    /// Starts `backend <subcommand> --listen 127.0.0.1:<free port>` with extra args and env, and
    /// waits until it accepts connections.
    pub fn start(subcommand: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut all = vec![
            subcommand.to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut p = Self {
            port,
            args: all,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(backend_bin());
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("BACKEND_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        self.child = Some(cmd.spawn().expect("spawn backend"));
        assert!(
            wait_for_port(self.port, Duration::from_secs(30)),
            "backend {:?} did not listen on {}",
            self.args,
            self.port
        );
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the process with SIGKILL (a crash: no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same command again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A deterministic reservation id for scripted tests: `name` plus the smallest suffix that puts
/// it in `event`'s slot group, where the saga draws its random ids (`backend::slots`).
pub fn res_id(name: &str, event: &str) -> String {
    let g = backend::reservations::keys::event_group(event);
    (0u32..)
        .map(|k| format!("{name}-{k}"))
        .find(|id| backend::slots::group_of_id(id) == g)
        .expect("some suffix lands in every group")
}
