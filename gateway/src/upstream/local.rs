//! Local resource errors: the gateway itself ran out of something (file descriptors, socket
//! buffers, memory, ephemeral ports) while connecting to an upstream server. Such an error says
//! nothing about the server, so it must never count as an upstream failure: the active checker
//! treats the check as inconclusive, and the proxy should answer without reporting a failure to
//! the outlier detector or the breaker (see [`local_resource_error`]).
//!
//! Every one seen is counted in `gateway_local_resource_errors_total{kind}` (process-wide
//! counters read at scrape time, see [`local_resource_errors`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Which local resource ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalResource {
    /// `EMFILE`: the process's file descriptor limit (`RLIMIT_NOFILE`).
    Emfile,
    /// `ENFILE`: the system-wide file limit.
    Enfile,
    /// `ENOBUFS`: no socket buffer space.
    Enobufs,
    /// `ENOMEM`: out of kernel memory.
    Enomem,
    /// `EADDRNOTAVAIL` (or `EADDRINUSE`) on connect: no free ephemeral port.
    EphemeralPorts,
    /// Pingora could not create or set up the socket, for another local reason.
    Socket,
}

impl LocalResource {
    /// Every kind, in label order.
    pub const ALL: [LocalResource; 6] = [
        LocalResource::Emfile,
        LocalResource::Enfile,
        LocalResource::Enobufs,
        LocalResource::Enomem,
        LocalResource::EphemeralPorts,
        LocalResource::Socket,
    ];

    /// The `kind` label: `emfile`, `enfile`, `enobufs`, `enomem`, `ephemeral_ports`, `socket`.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalResource::Emfile => "emfile",
            LocalResource::Enfile => "enfile",
            LocalResource::Enobufs => "enobufs",
            LocalResource::Enomem => "enomem",
            LocalResource::EphemeralPorts => "ephemeral_ports",
            LocalResource::Socket => "socket",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The kind of an OS error number, if it is a local resource error.
    pub fn from_errno(errno: i32) -> Option<Self> {
        match errno {
            libc::EMFILE => Some(LocalResource::Emfile),
            libc::ENFILE => Some(LocalResource::Enfile),
            libc::ENOBUFS => Some(LocalResource::Enobufs),
            libc::ENOMEM => Some(LocalResource::Enomem),
            libc::EADDRNOTAVAIL | libc::EADDRINUSE => Some(LocalResource::EphemeralPorts),
            _ => None,
        }
    }

    /// Counts one occurrence in `gateway_local_resource_errors_total{kind}`.
    pub fn record(self) {
        COUNTS[self.index()].fetch_add(1, Ordering::Relaxed);
    }
}

static COUNTS: [AtomicU64; 6] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// `(kind, count)` for every kind since the process started (zeros included), for `/metrics`.
pub fn local_resource_errors() -> Vec<(&'static str, u64)> {
    LocalResource::ALL
        .iter()
        .map(|k| (k.as_str(), COUNTS[k.index()].load(Ordering::Relaxed)))
        .collect()
}

/// The local resource an I/O error (or any error in its `source()` chain) reports, if any.
pub fn io_local_resource(e: &(dyn std::error::Error + 'static)) -> Option<LocalResource> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(kind) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .and_then(LocalResource::from_errno)
        {
            return Some(kind);
        }
        cur = err.source();
    }
    None
}

/// Whether this process is short of file descriptors right now: opens (and closes) `/dev/null`.
/// For errors that hide the cause, such as a failed name lookup.
pub fn fd_shortage_now() -> Option<LocalResource> {
    match std::fs::File::open("/dev/null") {
        Ok(_) => None,
        Err(e) => e.raw_os_error().and_then(LocalResource::from_errno),
    }
}

/// Whether a Pingora error (typically from connecting to an upstream, in `fail_to_connect` or
/// `fail_to_proxy`) is the gateway's own resource shortage rather than the server's fault.
///
/// Looks at every error in the chain: an OS error `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`,
/// `EADDRNOTAVAIL` or `EADDRINUSE`, or Pingora's `SocketError`/`BindError` (creating, setting up
/// or binding the local socket failed: nothing was sent to the server). Does not count it; call
/// [`LocalResource::record`] once per event.
pub fn local_resource_error(e: &pingora::Error) -> Option<LocalResource> {
    use pingora::ErrorType;
    let mut local_etype = false;
    let mut cur: &pingora::Error = e;
    loop {
        if matches!(cur.etype(), ErrorType::SocketError | ErrorType::BindError) {
            local_etype = true;
        }
        let Some(cause) = cur.cause.as_deref() else {
            break;
        };
        if let Some(inner) = cause.downcast_ref::<pingora::BError>() {
            cur = inner;
            continue;
        }
        if let Some(inner) = cause.downcast_ref::<pingora::Error>() {
            cur = inner;
            continue;
        }
        if let Some(kind) = io_local_resource(cause) {
            return Some(kind);
        }
        break;
    }
    local_etype.then_some(LocalResource::Socket)
}

/// Shorthand for `local_resource_error(e).is_some()`.
pub fn is_local_resource_error(e: &pingora::Error) -> bool {
    local_resource_error(e).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::{Error, ErrorType};
    use std::io;

    #[test]
    fn errnos_are_classified() {
        assert_eq!(
            LocalResource::from_errno(libc::EMFILE),
            Some(LocalResource::Emfile)
        );
        assert_eq!(
            LocalResource::from_errno(libc::EADDRNOTAVAIL),
            Some(LocalResource::EphemeralPorts)
        );
        assert_eq!(LocalResource::from_errno(libc::ECONNREFUSED), None);
        assert_eq!(LocalResource::from_errno(libc::ETIMEDOUT), None);
    }

    #[test]
    fn pingora_connect_errors_are_classified() {
        // What Pingora's connector builds when socket() fails with EMFILE.
        let socket = Error::because(
            ErrorType::SocketError,
            "failed to create socket",
            io::Error::from_raw_os_error(libc::EMFILE),
        );
        let e = Error::because(ErrorType::InternalError, "Fail to connect to x", socket);
        assert_eq!(local_resource_error(&e), Some(LocalResource::Emfile));

        // A refused connection is the server's problem.
        let refused = Error::because(
            ErrorType::ConnectRefused,
            "Fail to connect",
            io::Error::from_raw_os_error(libc::ECONNREFUSED),
        );
        assert!(!is_local_resource_error(&refused));
        // Wrapped in another error (std `source()` chain) it is still found.
        #[derive(Debug)]
        struct Wrap(io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Error::because(
            ErrorType::BindError,
            "Fail to connect",
            Wrap(io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
        );
        assert_eq!(
            local_resource_error(&wrapped),
            Some(LocalResource::EphemeralPorts)
        );
        // A socket set-up error without an OS error number is still local.
        let plain = Error::explain(ErrorType::SocketError, "setsockopt failed");
        assert_eq!(local_resource_error(&plain), Some(LocalResource::Socket));
        assert!(!is_local_resource_error(&Error::explain(
            ErrorType::ConnectTimedout,
            "timeout"
        )));
    }

    #[test]
    fn counts_are_listed_for_every_kind() {
        LocalResource::Enobufs.record();
        let all = local_resource_errors();
        assert_eq!(all.len(), 6);
        assert!(all.iter().any(|&(k, n)| k == "enobufs" && n >= 1));
    }
}
