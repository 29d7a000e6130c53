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

/// Logs (the access log included: one line per request) are gathered per thread and written
/// in batches, like NGINX's `access_log ... buffer=` (`gateway::log_buffer`); the returned guard
/// writes out what is left when `main` returns.
fn init_logging(format: LogFormat) -> gateway::log_buffer::FlushGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(gateway::log_buffer::BufferedStderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Plain text lines: the access log formats its own, byte for byte the same (access_log.rs).
    gateway::access_log::set_direct(format == LogFormat::Text && !ansi);
    gateway::log_buffer::start()
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
    // Writes out the buffered log lines when `main` returns.
    let _log_guard = init_logging(cli.log_format);
    gateway::reload::guard_sighup_early();
    gateway::fd_limit::raise();
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
