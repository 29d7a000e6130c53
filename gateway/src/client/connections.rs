//! The cap on open client connections (`client.max_connections`, "Hostile clients" item 4).
//!
//! Why the gateway counts connections itself: when the process runs out of file descriptors,
//! Pingora 0.9's accept loop logs an error and sleeps a whole second after `EMFILE` (and retries
//! at once, in a tight loop, after `ENFILE`/`ENOBUFS`/`ENOMEM`); connections pile up unanswered in
//! the listen backlog, and upstream connects and health checks fail for lack of descriptors. So
//! the gateway keeps client connections below the descriptor limit: past the cap a new
//! connection still gets accepted (there are descriptors left for it), is answered at once with
//! `503 gateway_overloaded` + `Retry-After: 1` and closed. Refused connections that are still
//! being answered are themselves bounded ([`REFUSING_MAX`]); beyond that they are closed without
//! an answer, so a flood can never eat the reserve kept for upstreams.
//!
//! The default cap ([`auto_max_connections`]) leaves half of what remains after
//! [`FD_RESERVE`] to the upstream side: every client connection being proxied may hold one
//! upstream connection too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Descriptors kept out of the automatic cap for the process itself: listeners, the admin
/// server, health checks, the limit store, log files, the runtime's own.
pub const FD_RESERVE: u64 = 64;

/// At most this many connections past the cap are answered (503, then a lingering close) at
/// the same time; more are closed at once.
pub const REFUSING_MAX: usize = 64;

/// The cap used when `client.max_connections` is not set: half of the soft `RLIMIT_NOFILE` left
/// after [`FD_RESERVE`] and the refused connections being answered, at least 1.
pub fn auto_max_connections(nofile_soft: u64) -> usize {
    let usable = nofile_soft.saturating_sub(FD_RESERVE + REFUSING_MAX as u64) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(1)
}

/// What to do with a newly accepted connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; the slot is released when the guard drops.
    Serve(ConnectionSlot),
    /// Past the cap: answer 503 and close; the guard holds one of the [`REFUSING_MAX`] slots.
    Refuse(ConnectionSlot),
    /// Past the cap and too many refusals under way: close without an answer.
    Close,
}

/// Counts the open client connections of one listener, across reloads.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    open: AtomicUsize,
    refusing: AtomicUsize,
}

impl ConnectionCounter {
    /// A counter with nothing open.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Client connections being served now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits one new connection under `max` served connections.
    pub fn admit(self: &Arc<Self>, max: usize) -> Admission {
        if take_slot(&self.open, max) {
            return Admission::Serve(ConnectionSlot {
                counter: Arc::clone(self),
                refused: false,
            });
        }
        if take_slot(&self.refusing, REFUSING_MAX) {
            return Admission::Refuse(ConnectionSlot {
                counter: Arc::clone(self),
                refused: true,
            });
        }
        Admission::Close
    }
}

/// Increments `n` unless it is already at `max`.
fn take_slot(n: &AtomicUsize, max: usize) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        (v < max).then_some(v + 1)
    })
    .is_ok()
}

/// One admitted connection; dropping it frees its slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    refused: bool,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let n = if self.refused {
            &self.counter.refusing
        } else {
            &self.counter.open
        };
        n.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_cap_leaves_the_reserve_and_half_for_upstreams() {
        assert_eq!(auto_max_connections(1024), (1024 - 64 - 64) / 2);
        assert_eq!(auto_max_connections(256), 64);
        assert_eq!(auto_max_connections(10), 1);
        assert_eq!(
            auto_max_connections(u64::MAX),
            ((u64::MAX - 128) / 2) as usize
        );
    }

    #[test]
    fn serves_up_to_the_cap_then_refuses_then_closes() {
        let c = ConnectionCounter::new();
        let served: Vec<_> = (0..3).map(|_| c.admit(3)).collect();
        assert!(served.iter().all(|a| matches!(a, Admission::Serve(_))));
        assert_eq!(c.open(), 3);
        let refused: Vec<_> = (0..REFUSING_MAX).map(|_| c.admit(3)).collect();
        assert!(refused.iter().all(|a| matches!(a, Admission::Refuse(_))));
        assert!(matches!(c.admit(3), Admission::Close));
        drop(refused);
        assert!(matches!(c.admit(3), Admission::Refuse(_)));
        drop(served);
        assert_eq!(c.open(), 0);
        assert!(matches!(c.admit(3), Admission::Serve(_)));
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_cap() {
        let c = ConnectionCounter::new();
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (c, peak) = (Arc::clone(&c), Arc::clone(&peak));
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Admission::Serve(slot) = c.admit(5) {
                            peak.fetch_max(c.open(), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(c.open(), 0);
    }
}
