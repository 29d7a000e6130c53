//! Command line (every flag has an environment twin, SPEC §3).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// `gateway`: the Pingora reverse proxy of SPEC §7.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// Configuration file (YAML, SPEC §7).
    #[arg(
        short = 'c',
        long = "conf",
        env = "GATEWAY_CONFIG",
        default_value = "conf/gateway.yaml"
    )]
    pub conf: PathBuf,
    /// Test the configuration file and exit: 0 when valid, else 1 with one line per problem.
    #[arg(short = 't', long = "test", env = "GATEWAY_CONFIG_TEST")]
    pub test: bool,
    /// Take over the listening sockets of a running gateway: start this process first, then
    /// send SIGQUIT to the old one (Pingora's zero-downtime upgrade).
    #[arg(short = 'u', long = "upgrade", env = "GATEWAY_UPGRADE")]
    pub upgrade: bool,
    /// Unix socket used for the SIGQUIT socket hand-off (the same for the old and new process).
    #[arg(
        long = "upgrade-sock",
        env = "GATEWAY_UPGRADE_SOCK",
        default_value = "/tmp/gateway_upgrade.sock"
    )]
    pub upgrade_sock: PathBuf,
    /// Log line format (the level comes from `RUST_LOG`, default `info`).
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}
