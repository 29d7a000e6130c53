//! `gateway -c conf/gateway.yaml` runs the proxy; `gateway -t -c FILE` tests a config file.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{Cli, LogFormat};
use gateway::state::State;
use tracing_subscriber::EnvFilter;

/// Pingora allocates a lot per request (header maps, `Bytes`, boxed futures) and frees across
/// threads; glibc malloc took 13-15 % of the gateway's CPU in a profile (docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both. Each client connection,
/// upstream connection and health check holds a file descriptor; the soft limit is often 1024
/// (or less in containers) while the hard limit allows far more, and running out makes
/// accept() and every upstream connect fail with EMFILE.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
        return;
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    // An unlimited hard limit is not a valid soft limit for NOFILE: the kernel caps at nr_open.
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= target {
        tracing::info!(
            soft,
            hard,
            "RLIMIT_NOFILE: soft limit {soft} already at the hard limit {hard}"
        );
        return;
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(soft, hard, error = %e, "RLIMIT_NOFILE: cannot raise the soft limit {soft} to {target}");
        return;
    }
    tracing::info!(
        soft_before = soft,
        soft = target,
        hard,
        "RLIMIT_NOFILE: soft limit raised from {soft} to {target} (hard limit {hard})"
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let shown = cli.conf.display().to_string();
    if cli.test {
        return match gateway::config::load(&cli.conf) {
            Ok(_) => {
                println!("configuration file {shown} test is successful");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for line in errors.lines() {
                    eprintln!("{line}");
                }
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_format);
    gateway::reload::guard_sighup_early();
    raise_fd_limit();
    let config = match gateway::config::load(&cli.conf) {
        Ok(c) => c,
        Err(errors) => {
            for line in errors.lines() {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let state = match State::new(config, cli.conf.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = gateway::server::RunOptions {
        upgrade: cli.upgrade,
        upgrade_sock: cli.upgrade_sock.clone(),
    };
    match gateway::server::run(state, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
