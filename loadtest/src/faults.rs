//! Fault injection and, above all, undoing it.
//!
//! A scenario registers how to undo a fault with the [`Restorer`] *before* injecting it. The
//! scenario restores on its own when it wants to measure recovery; whatever is still registered
//! when the scenario ends (error, panic-free early return, Ctrl-C) is undone by the runner.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::Mutex;

use crate::http::Http;

/// A fault that could not be injected or undone.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// `docker compose` (and `docker-compose`) failed or is missing.
    #[error("docker compose {action} {service}: {message}")]
    Compose {
        /// `stop` or `start`.
        action: String,
        /// Compose service.
        service: String,
        /// Output or spawn error.
        message: String,
    },
    /// A chaos endpoint refused or was unreachable.
    #[error("chaos reset: {0}")]
    Chaos(#[from] crate::http::HttpError),
    /// A process could not be inspected, killed or restarted.
    #[error("process {pid}: {message}")]
    Process {
        /// Process id.
        pid: u32,
        /// What failed.
        message: String,
    },
}

/// Everything needed to start a killed process again as it was.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The killed process id.
    pub pid: u32,
    /// argv (argv[0] first).
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl ProcessSpec {
    /// Reads `/proc/<pid>/{cmdline,environ,cwd}`.
    pub fn capture(pid: u32) -> Result<Self, FaultError> {
        let err = |m: String| FaultError::Process { pid, message: m };
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let argv = split_nul(
            &std::fs::read(proc_dir.join("cmdline")).map_err(|e| err(format!("cmdline: {e}")))?,
        );
        if argv.is_empty() {
            return Err(err("empty command line (a zombie or kernel thread?)".into()));
        }
        let env = split_nul(
            &std::fs::read(proc_dir.join("environ")).map_err(|e| err(format!("environ: {e}")))?,
        )
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
        let cwd = std::fs::read_link(proc_dir.join("cwd")).map_err(|e| err(format!("cwd: {e}")))?;
        Ok(Self {
            pid,
            argv,
            env,
            cwd,
        })
    }

    /// The command line, for reports.
    pub fn render(&self) -> String {
        self.argv.join(" ")
    }
}

/// Finds the process listening on TCP `port` (any local address) by matching the socket inode of
/// `/proc/net/tcp{,6}` with the `fd` links of `/proc/*/fd`.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] (hex ip:port), st is f[3] (0A = LISTEN), inode is f[9].
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let p = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if p == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten().take(100_000) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten().take(100_000) {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| Path::new(i) == target) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// `kill -9 <pid>`.
pub async fn kill_hard(pid: u32) -> Result<(), FaultError> {
    let out = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .output()
        .await
        .map_err(|e| FaultError::Process {
            pid,
            message: format!("kill: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FaultError::Process {
            pid,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Starts the process again, detached in its own process group, output appended to `log`.
/// Returns the new pid.
pub fn respawn(spec: &ProcessSpec, log: &Path) -> Result<u32, FaultError> {
    let err = |m: String| FaultError::Process {
        pid: spec.pid,
        message: m,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| err(format!("log {}: {e}", log.display())))?;
    let out2 = out.try_clone().map_err(|e| err(format!("log: {e}")))?;
    let mut cmd = std::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(out2);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| err(format!("respawn: {e}")))?;
    Ok(child.id())
}

/// `docker compose` with `docker-compose` as fallback.
#[derive(Debug, Clone)]
pub struct Compose {
    /// `-f FILE`.
    pub file: Option<PathBuf>,
}

impl Compose {
    /// Runs `docker compose [-f FILE] <args>` (falling back to `docker-compose`), bounded by
    /// 60 s; returns its standard output. `action` and `service` name it in errors.
    async fn run(&self, action: &str, service: &str, args: &[&str]) -> Result<String, FaultError> {
        let mut last = String::new();
        for (prog, pre) in [("docker", vec!["compose"]), ("docker-compose", vec![])] {
            let mut cmd = Command::new(prog);
            cmd.args(&pre);
            if let Some(f) = &self.file {
                cmd.arg("-f").arg(f);
            }
            cmd.args(args);
            let run = tokio::time::timeout(Duration::from_secs(60), cmd.output()).await;
            match run {
                Ok(Ok(out)) if out.status.success() => {
                    return Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                }
                Ok(Ok(out)) => {
                    last = format!(
                        "{prog}: {}",
                        String::from_utf8_lossy(&out.stderr).trim().to_owned()
                    )
                }
                Ok(Err(e)) => last = format!("{prog}: {e}"),
                Err(_) => last = format!("{prog}: no answer within 60 s"),
            }
        }
        Err(FaultError::Compose {
            action: action.into(),
            service: service.into(),
            message: last,
        })
    }

    /// `docker compose stop <service>`.
    pub async fn stop(&self, service: &str) -> Result<(), FaultError> {
        self.run("stop", service, &["stop", "-t", "2", service])
            .await
            .map(drop)
    }

    /// `docker compose start <service>`.
    pub async fn start(&self, service: &str) -> Result<(), FaultError> {
        self.run("start", service, &["start", service])
            .await
            .map(drop)
    }

    /// `docker compose exec -T <service> <command...>`: the command's standard output.
    pub async fn exec(&self, service: &str, command: &[&str]) -> Result<String, FaultError> {
        let mut args = vec!["exec", "-T", service];
        args.extend_from_slice(command);
        self.run("exec", service, &args).await
    }
}

/// How to undo one fault.
#[derive(Debug, Clone)]
pub enum RestoreAction {
    /// `DELETE {service}/admin/chaos`.
    ChaosReset(String),
    /// `docker compose start <service>`.
    ComposeStart(Compose, String),
    /// Start a killed process again; its output goes to the log path.
    Respawn(ProcessSpec, PathBuf),
}

impl RestoreAction {
    /// Undoes the fault. Returns a note for the report (e.g. the respawned pid).
    pub async fn run(&self, http: &Http) -> Result<String, FaultError> {
        match self {
            Self::ChaosReset(url) => {
                http.delete(&format!("{url}/admin/chaos")).await?;
                Ok(format!("chaos reset on {url}"))
            }
            Self::ComposeStart(c, svc) => {
                c.start(svc).await?;
                Ok(format!("docker compose start {svc}"))
            }
            Self::Respawn(spec, log) => {
                let pid = respawn(spec, log)?;
                Ok(format!(
                    "restarted `{}` as pid {pid} (output: {})",
                    spec.render(),
                    log.display()
                ))
            }
        }
    }
}

/// The undo list of the running scenario.
#[derive(Debug, Clone, Default)]
pub struct Restorer {
    pending: Arc<Mutex<Vec<RestoreAction>>>,
}

impl Restorer {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an undo step (call before injecting the fault).
    pub async fn push(&self, a: RestoreAction) {
        self.pending.lock().await.push(a);
    }

    /// Runs every pending undo step, newest first, each attempted even if another fails (each
    /// retried up to 3 times). Returns notes and errors.
    pub async fn restore_all(&self, http: &Http) -> (Vec<String>, Vec<String>) {
        let actions: Vec<RestoreAction> = std::mem::take(&mut *self.pending.lock().await);
        let mut notes = Vec::new();
        let mut errors = Vec::new();
        for a in actions.iter().rev() {
            let mut last_err = None;
            for attempt in 0..3 {
                match a.run(http).await {
                    Ok(n) => {
                        notes.push(n);
                        last_err = None;
                        break;
                    }
                    Err(e) => {
                        last_err = Some(e.to_string());
                        if attempt < 2 {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            if let Some(e) = last_err {
                errors.push(e);
            }
        }
        (notes, errors)
    }

    /// Whether anything is still to be undone.
    pub async fn is_empty(&self) -> bool {
        self.pending.lock().await.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_listener_and_captures_self() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        let spec = ProcessSpec::capture(std::process::id()).expect("capture");
        assert!(!spec.argv.is_empty());
        assert!(spec.cwd.is_absolute());
    }

    #[tokio::test]
    async fn restorer_runs_every_action_and_reports_failures() {
        // Port 9 on loopback refuses connections: the chaos reset fails and is reported.
        let r = Restorer::new();
        r.push(RestoreAction::ChaosReset("http://127.0.0.1:9".into()))
            .await;
        let http = Http::new().expect("client");
        let (notes, errors) = r.restore_all(&http).await;
        assert!(notes.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(r.is_empty().await);
    }
}
