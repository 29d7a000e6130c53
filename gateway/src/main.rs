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

/// Bytes of log lines gathered before one `write(2)` to stderr (NGINX's `access_log ... buffer=`).
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// Log lines waiting for the writer thread before a request thread has to wait for it.
const LOG_QUEUE_LINES: usize = 128_000;

/// Logs (the access log included: one line per request) are formatted on the request thread and
/// written by a dedicated thread, so a request never waits for stderr: a line costs a channel
/// push. The writer gathers whatever lines are queued into one buffer and writes it with one
/// system call, flushing as soon as the queue is empty, so a quiet gateway's lines appear at once.
/// The queue never drops a line: when it is full (stderr blocked), request threads wait, as
/// NGINX's workers do on a blocked log file. Lines still queued when the process is killed are
/// lost; a normal shutdown flushes them when the returned guard is dropped.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("gateway-log")
        .finish(std::io::BufWriter::with_capacity(
            LOG_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
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
    // Flushes the log queue when `main` returns.
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
