//! One-shot Redis admin commands for the scenarios (`CLUSTER NODES`, `INFO replication`,
//! `CONFIG GET`) against nodes that may be down: a fresh connection per command (a dead node must
//! not leave a client reconnecting in the background) and a hard bound on the whole call.

use std::time::Duration;

use redis::{AsyncConnectionConfig, Value};

/// A command that could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Connecting failed, the node answered with an error, or the reply had another type.
    #[error("redis {addr}: {source}")]
    Redis {
        /// `host:port`.
        addr: String,
        /// Cause.
        source: redis::RedisError,
    },
    /// No complete answer in time.
    #[error("redis {addr}: no answer within {ms} ms")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The bound.
        ms: u64,
    },
}

/// Sends one command to `addr` (`host:port`) and reads its reply, all within `timeout`.
pub async fn command(addr: &str, args: &[&str], timeout: Duration) -> Result<Value, RespError> {
    let err = |source| RespError::Redis {
        addr: addr.to_owned(),
        source,
    };
    let run = async {
        let client = redis::Client::open(format!("redis://{addr}")).map_err(err)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(err)?;
        let (name, rest) = args.split_first().unwrap_or((&"PING", &[]));
        redis::cmd(name)
            .arg(rest)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(err)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(RespError::Timeout {
            addr: addr.to_owned(),
            ms: timeout.as_millis() as u64,
        }),
    }
}

/// [`command`] for commands answering a string (`CLUSTER NODES`, `INFO`).
pub async fn command_text(
    addr: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, RespError> {
    let reply = command(addr, args, timeout).await?;
    redis::from_redis_value(reply).map_err(|e| RespError::Redis {
        addr: addr.to_owned(),
        source: e.into(),
    })
}

/// The value of `name:` in an `INFO` section (`role`, `master_link_status`, ...).
pub fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::to_owned)
    })
}

/// `CONFIG GET` pairs (`[k1, v1, k2, v2, ...]`, or a RESP3 map) as a list.
pub fn pairs(reply: &Value) -> Vec<(String, String)> {
    redis::from_redis_value_ref::<Vec<(String, String)>>(reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_config_pairs() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role").as_deref(), Some("slave"));
        assert_eq!(
            info_field(info, "master_link_status").as_deref(),
            Some("up")
        );
        assert_eq!(info_field(info, "master_host"), None);
        let reply = Value::Array(vec![
            Value::BulkString(b"port".to_vec()),
            Value::BulkString(b"7000".to_vec()),
            Value::BulkString(b"dir".to_vec()),
            Value::BulkString(b"/tmp".to_vec()),
        ]);
        assert_eq!(
            pairs(&reply),
            vec![
                ("port".into(), "7000".into()),
                ("dir".into(), "/tmp".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_dead_node_is_an_error_in_time() {
        let started = std::time::Instant::now();
        let r = command("127.0.0.1:1", &["PING"], Duration::from_millis(500)).await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
