//! Gateway configuration: YAML → validated model (SPEC §7).
//!
//! [`load`] reads a file, [`parse`] a string. Every problem is collected (not just the first) and
//! names the key path it concerns, e.g. `routes[0].limit_req[1].zone: unknown zone "foo"`, so
//! `gateway -t` can print one line per problem like `nginx -t`.

pub mod model;
mod parse;
mod reader;

use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

pub use model::*;
pub use parse::parse_rate;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Key path, e.g. `upstreams.reservations.servers[1]` (empty for the whole document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a configuration file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.path.is_empty() {
                e.message.clone()
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// One line per problem, as `gateway -t` prints them.
    pub fn lines(&self) -> Vec<String> {
        render(&self.0).lines().map(str::to_string).collect()
    }

    fn single(path: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.to_string(),
            message: message.into(),
        }])
    }
}

/// Reads, parses and validates the file at `path`.
pub fn load(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigErrors> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigErrors::single("", format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigErrors::single("", format!("{} is not UTF-8", path.display())))?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates `text`; `path` is recorded as the config's source.
pub fn parse(text: &str, path: &str) -> Result<GatewayConfig, ConfigErrors> {
    let root: serde_norway::Value = serde_norway::from_str(text)
        .map_err(|e| ConfigErrors::single("", format!("invalid YAML: {e}")))?;
    let source = ConfigSource {
        path: path.to_string(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        loaded_at: SystemTime::now(),
    };
    let mut problems = reader::Problems::default();
    match parse::document(&root, source, &mut problems) {
        Some(config) if problems.0.is_empty() => Ok(config),
        _ => {
            if problems.0.is_empty() {
                problems.push("", "invalid configuration");
            }
            Err(ConfigErrors(problems.0))
        }
    }
}
