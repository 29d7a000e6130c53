//! A minimal Redis client: one command per connection, RESP2 replies, bounded in time and size.
//!
//! The scenarios only need a few read-only admin commands (`CLUSTER NODES`, `INFO replication`,
//! `CONFIG GET`) against nodes that may be down, so a short-lived connection with a hard timeout
//! is the right shape, and it keeps a full Redis client out of the load generator.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest reply accepted (a `CLUSTER NODES` of a big cluster is a few hundred kB).
const MAX_REPLY: usize = 8 << 20;
/// Deepest array nesting accepted.
const MAX_DEPTH: usize = 8;

/// A command that could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Connecting, writing or reading failed.
    #[error("redis {addr}: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("redis {addr}: no answer within {ms} ms")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The bound.
        ms: u64,
    },
    /// The reply is not RESP2, or too large.
    #[error("redis {addr}: bad reply: {reason}")]
    Protocol {
        /// `host:port`.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// Redis answered with an error.
    #[error("redis {addr}: {message}")]
    Server {
        /// `host:port`.
        addr: String,
        /// The error line.
        message: String,
    },
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `:1`.
    Int(i64),
    /// `$n` bulk string; `None` for the null bulk.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple or bulk string), if it is one.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends one command to `addr` (`host:port`) and reads its reply, all within `timeout`.
pub async fn command(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply, RespError> {
    let io = |source| RespError::Io {
        addr: addr.to_owned(),
        source,
    };
    let run = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.write_all(&encode(args)).await.map_err(io)?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader, 0).await.map_err(|e| match e {
            ReadError::Io(source) => RespError::Io {
                addr: addr.to_owned(),
                source,
            },
            ReadError::Protocol(reason) => RespError::Protocol {
                addr: addr.to_owned(),
                reason,
            },
            ReadError::Server(message) => RespError::Server {
                addr: addr.to_owned(),
                message,
            },
        })
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
    reply.text().ok_or_else(|| RespError::Protocol {
        addr: addr.to_owned(),
        reason: format!(
            "expected a string reply to {}, got {reply:?}",
            args.join(" ")
        ),
    })
}

/// Why a reply could not be read (turned into [`RespError`] with the address).
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Protocol(String),
    Server(String),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, ReadError> {
    let mut line = Vec::new();
    // Bounded: a header line is short; a peer that sends no CRLF is not Redis.
    let n = (&mut *r)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(ReadError::Protocol("connection closed".into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(ReadError::Protocol("line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn parse_len(s: &str) -> Result<i64, ReadError> {
    s.parse::<i64>()
        .map_err(|_| ReadError::Protocol(format!("bad length {s:?}")))
}

fn read_reply<'a, R: AsyncBufRead + Unpin + Send>(
    r: &'a mut R,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, ReadError>> + Send + 'a>> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err(ReadError::Protocol("arrays nested too deep".into()));
        }
        let line = read_line(r).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Err(ReadError::Server(rest.to_owned())),
            ":" => Ok(Reply::Int(parse_len(rest)?)),
            "$" => {
                let n = parse_len(rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_REPLY {
                    return Err(ReadError::Protocol(format!("bulk of {n} bytes")));
                }
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(n);
                Ok(Reply::Bulk(Some(buf)))
            }
            "*" => {
                let n = parse_len(rest)?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_REPLY / 4 {
                    return Err(ReadError::Protocol(format!("array of {n} items")));
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(read_reply(r, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(ReadError::Protocol(format!(
                "unknown reply type {other:?} in {line:?}"
            ))),
        }
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

/// `CONFIG GET` pairs (`[k1, v1, k2, v2, ...]`) as a list.
pub fn pairs(reply: &Reply) -> Vec<(String, String)> {
    let Reply::Array(Some(items)) = reply else {
        return Vec::new();
    };
    items
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.text()?, v.text()?)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply, ReadError> {
        let mut r = BufReader::new(bytes);
        read_reply(&mut r, 0).await
    }

    #[tokio::test]
    async fn replies() {
        assert_eq!(
            parse(b"+OK\r\n").await.ok(),
            Some(Reply::Simple("OK".into()))
        );
        assert_eq!(parse(b":42\r\n").await.ok(), Some(Reply::Int(42)));
        assert_eq!(
            parse(b"$5\r\nab\r\nc\r\n")
                .await
                .ok()
                .and_then(|r| r.text()),
            Some("ab\r\nc".into())
        );
        assert_eq!(parse(b"$-1\r\n").await.ok(), Some(Reply::Bulk(None)));
        let arr = parse(b"*2\r\n$4\r\nport\r\n$4\r\n7000\r\n")
            .await
            .expect("array");
        assert_eq!(pairs(&arr), vec![("port".into(), "7000".into())]);
        assert!(matches!(
            parse(b"-ERR nope\r\n").await,
            Err(ReadError::Server(m)) if m == "ERR nope"
        ));
        assert!(matches!(
            parse(b"?x\r\n").await,
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(parse(b"+OK").await, Err(ReadError::Protocol(_))));
    }

    #[test]
    fn encoding_and_info() {
        assert_eq!(
            encode(&["CLUSTER", "NODES"]),
            b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nNODES\r\n".to_vec()
        );
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role").as_deref(), Some("slave"));
        assert_eq!(
            info_field(info, "master_link_status").as_deref(),
            Some("up")
        );
        assert_eq!(info_field(info, "master"), None);
    }

    #[tokio::test]
    async fn refused_connection_is_an_io_error() {
        let r = command("127.0.0.1:9", &["PING"], Duration::from_secs(2)).await;
        assert!(matches!(r, Err(RespError::Io { .. })));
    }
}
