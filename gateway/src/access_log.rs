//! One structured access-log line per request (target `access`), written from `logging()`, and
//! one per answer given before a request reached the proxy logic ([`write_early`]).
//!
//! With the text log format on a non-terminal stderr (how the gateway runs in production and in
//! every benchmark) the line is formatted here, straight into the thread's log buffer, byte for
//! byte as `tracing-subscriber`'s default formatter would write it (a unit test holds the two
//! side by side). Why not through `tracing`: an access line per request went through the event
//! dispatch, the filter, a visitor per field, `Debug` escaping of every string and a `String`
//! per event, about 6 % of the gateway's throughput on the static benchmark; here it is a
//! handful of copies. The filter still decides (`RUST_LOG=info,access=off` turns the lines off);
//! JSON output and a terminal (colours) go through `tracing` as before.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::Level;

use crate::log_buffer;

/// What the limiters did with a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LimiterNote<'a> {
    /// No limit applied, or all passed at once.
    #[default]
    Pass,
    /// Held by `limit_req` for this many milliseconds.
    Delayed(u64),
    /// Rejected by this zone (`limit_req` or `limit_conn`).
    Rejected(&'a str),
    /// A dry-run zone would have rejected.
    DryRun(&'a str),
}

impl fmt::Display for LimiterNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterNote::Pass => f.write_str("pass"),
            LimiterNote::Delayed(ms) => write!(f, "delayed:{ms}"),
            LimiterNote::Rejected(zone) => write!(f, "rejected:{zone}"),
            LimiterNote::DryRun(zone) => write!(f, "dry_run:{zone}"),
        }
    }
}

/// The fields of one access-log line.
#[derive(Debug)]
pub struct Entry<'a> {
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// Client IP (after trusted proxies) as text, formatted once by the caller.
    pub client_ip: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Path (without query).
    pub path: &'a str,
    /// Route label.
    pub route: &'a str,
    /// Upstream server of the last attempt (`host:port`), if any.
    pub upstream_server: Option<&'a str>,
    /// Response status (0 when nothing could be sent).
    pub status: u16,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Limiter decision.
    pub limiter: LimiterNote<'a>,
    /// Where the `limit_req` decision was taken: `-`, `local`, `cluster` or `fallback`.
    pub limit_scope: &'a str,
    /// Error, if the request failed.
    pub error: Option<&'a str>,
}

/// Whether lines are formatted here ([`set_direct`]) rather than by the `tracing` subscriber.
static DIRECT: AtomicBool = AtomicBool::new(false);

/// Formats access lines here, in the subscriber's plain text format, when `on`. Call it only
/// when the installed subscriber is `tracing_subscriber::fmt()` with the default (full) text
/// format, its default timer, no ANSI colours and [`log_buffer::BufferedStderr`] as writer.
pub fn set_direct(on: bool) {
    DIRECT.store(on, Ordering::Relaxed);
}

/// Writes the access line of `e`, if the log filter lets `access` lines through.
pub fn write(e: &Entry<'_>) {
    if !DIRECT.load(Ordering::Relaxed) {
        return write_via_tracing(e);
    }
    if tracing::enabled!(target: "access", Level::INFO) {
        let now = SystemTime::now();
        log_buffer::append(|out| write_text(out, now, e));
    }
}

/// The access line as a `tracing` event, formatted by the installed subscriber.
fn write_via_tracing(e: &Entry<'_>) {
    tracing::info!(
        target: "access",
        request_id = e.request_id,
        client_ip = %e.client_ip.unwrap_or("-"),
        method = e.method,
        path = e.path,
        route = e.route,
        upstream_server = e.upstream_server.unwrap_or("-"),
        status = e.status,
        duration_ms = e.duration_ms,
        limiter = %e.limiter,
        limit_scope = e.limit_scope,
        error = e.error.unwrap_or("-"),
        "request"
    );
}

/// An answer given on the connection before the proxy logic saw the request (a head refused
/// while it was read or parsed, a late head): see `client::deadline`.
#[derive(Debug)]
pub struct EarlyEntry<'a> {
    /// The `X-Request-Id` sent with the answer.
    pub request_id: &'a str,
    /// The socket peer (trusted proxies are not applied: the head was not read).
    pub client_ip: Option<IpAddr>,
    /// Method from the request line, `-` when unknown.
    pub method: &'a str,
    /// Path from the request line, `-` when unknown.
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// Milliseconds the head took, when it was held back (else 0).
    pub duration_ms: f64,
    /// Why the request was refused.
    pub reason: &'a str,
}

/// Writes the line for an early answer: the same fields as [`write`], route `none`, the reason
/// as the error.
pub fn write_early(e: &EarlyEntry<'_>) {
    let client_ip = e.client_ip.map(|ip| ip.to_string());
    write(&Entry {
        request_id: e.request_id,
        client_ip: client_ip.as_deref(),
        method: e.method,
        path: e.path,
        route: "none",
        upstream_server: None,
        status: e.status,
        duration_ms: e.duration_ms,
        limiter: LimiterNote::Pass,
        limit_scope: "-",
        error: Some(e.reason),
    });
}

/// Appends the line of `e` at `now` to `out` as `tracing-subscriber`'s default text format
/// renders the event of [`write_via_tracing`]: strings as `Debug` (quoted, escaped), displayed
/// values bare, a newline at the end.
fn write_text(out: &mut Vec<u8>, now: SystemTime, e: &Entry<'_>) {
    write_timestamp(out, now);
    out.extend_from_slice(b"  INFO access: request request_id=");
    push_debug_str(out, e.request_id);
    out.extend_from_slice(b" client_ip=");
    out.extend_from_slice(e.client_ip.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" method=");
    push_debug_str(out, e.method);
    out.extend_from_slice(b" path=");
    push_debug_str(out, e.path);
    out.extend_from_slice(b" route=");
    push_debug_str(out, e.route);
    out.extend_from_slice(b" upstream_server=");
    push_debug_str(out, e.upstream_server.unwrap_or("-"));
    out.extend_from_slice(b" status=");
    push_u64(out, u64::from(e.status));
    out.extend_from_slice(b" duration_ms=");
    push_debug_f64(out, e.duration_ms);
    out.extend_from_slice(b" limiter=");
    match e.limiter {
        LimiterNote::Pass => out.extend_from_slice(b"pass"),
        other => {
            let _ = write!(out, "{other}");
        }
    }
    out.extend_from_slice(b" limit_scope=");
    push_debug_str(out, e.limit_scope);
    out.extend_from_slice(b" error=");
    push_debug_str(out, e.error.unwrap_or("-"));
    out.push(b'\n');
}

/// `s` as `{:?}` writes it. Printable ASCII without quotes or backslashes (nearly every value)
/// is copied as it is; anything else takes `Debug`'s own escaping.
fn push_debug_str(out: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// Whether `{:?}` writes `s` as it is between quotes: printable ASCII, no `"` or `\`. Every
/// field of every access line passes here, so the bytes are checked 16 at a time without an
/// early exit per byte, which the compiler turns into vector compares.
fn needs_no_escape(s: &[u8]) -> bool {
    let plain = |b: u8| (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\');
    let mut chunks = s.chunks_exact(16);
    let whole = chunks.all(|c| c.iter().fold(true, |ok, &b| ok & plain(b)));
    whole && chunks.remainder().iter().all(|&b| plain(b))
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `ms` as `{:?}` writes it. A duration is whole microseconds over 1000 (see `logging()`),
/// whose shortest round-trip form is its three decimals with trailing zeros dropped (`.0` when
/// none are left); any other value takes `Debug` itself.
fn push_debug_f64(out: &mut Vec<u8>, ms: f64) {
    let micros = (ms * 1000.0).round();
    let exact = (0.0..1e12).contains(&micros) && micros / 1000.0 == ms;
    if !exact {
        let _ = write!(out, "{ms:?}");
        return;
    }
    let micros = micros as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let text = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let mut len = 3;
    while text[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(&text[..len]);
}

thread_local! {
    /// The last second this thread stamped, and its text up to the fraction
    /// (`2026-12-02T12:00:52.`): a line within the same second only adds its microseconds.
    static SECOND: std::cell::RefCell<(u64, [u8; 20])> = const { std::cell::RefCell::new((u64::MAX, [0; 20])) };
}

/// `now` as `tracing-subscriber`'s `SystemTime` timer writes it (RFC 3339, UTC, microseconds).
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let cached = now.duration_since(UNIX_EPOCH).ok().and_then(|since| {
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != since.as_secs() {
                let at = chrono::DateTime::<chrono::Utc>::from(
                    UNIX_EPOCH + Duration::from_secs(since.as_secs()),
                );
                // Not 20 bytes for a year outside 0..=9999: no cache then.
                *text = at
                    .format("%Y-%m-%dT%H:%M:%S.")
                    .to_string()
                    .as_bytes()
                    .try_into()
                    .ok()?;
                *second = since.as_secs();
            }
            out.extend_from_slice(text);
            push_micros(out, since.subsec_micros());
            Some(())
        })
    });
    if cached.is_none() {
        let at = chrono::DateTime::<chrono::Utc>::from(now);
        let _ = write!(
            out,
            "{}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
}

/// The six digits of the fraction and the `Z`.
fn push_micros(out: &mut Vec<u8>, micros: u32) {
    let mut text = [b'Z'; 7];
    let mut n = micros;
    for d in text[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    proptest::proptest! {
        #[test]
        fn needs_no_escape_is_the_bytewise_check(s in "[ -~\u{0}-\u{1f}\u{7f}\u{e9}\u{200b}]{0,40}") {
            let bytewise = s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
            proptest::prop_assert_eq!(needs_no_escape(s.as_bytes()), bytewise, "{:?}", s);
            if bytewise {
                // What it promises: `{:?}` adds only the quotes.
                proptest::prop_assert_eq!(format!("{s:?}"), format!("\"{s}\""));
            }
        }
    }

    #[test]
    fn needs_no_escape_checks_every_chunk_and_the_rest() {
        let plain = "0123456789abcdef0123456789abcdef/x";
        assert!(needs_no_escape(plain.as_bytes()));
        for i in 0..plain.len() {
            for bad in [b'"', b'\\', b'\n', 0x7f, 0x1f, 0xc3] {
                let mut b = plain.as_bytes().to_vec();
                b[i] = bad;
                assert!(!needs_no_escape(&b), "byte {bad:#x} at {i}");
            }
        }
    }

    /// What a `tracing-subscriber` set up as `main` sets it up (plain text, no colours) writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn via_tracing(e: &Entry<'_>) -> String {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || write_via_tracing(e));
        let text = sink.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    fn direct(e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, SystemTime::now(), e);
        String::from_utf8(out).unwrap()
    }

    /// Both lines without their timestamps (the 27 characters up to the first space).
    fn untimed(line: &str) -> &str {
        line.split_once(' ').map_or(line, |(_, rest)| rest)
    }

    fn entry<'a>() -> Entry<'a> {
        Entry {
            request_id: "792eb0ca-4821-419a-a8ef-160d481e0bc8",
            client_ip: Some("127.0.0.1"),
            method: "GET",
            path: "/api/events",
            route: "/",
            upstream_server: Some("127.0.0.1:27001"),
            status: 200,
            duration_ms: 0.515,
            limiter: LimiterNote::Pass,
            limit_scope: "local",
            error: None,
        }
    }

    #[test]
    fn the_direct_line_is_the_subscribers_line() {
        let odd = [
            "/a\"b",
            "/back\\slash",
            "/new\nline\r\t",
            "/caf\u{e9}",
            "/zero\u{200d}width",
            "/del\u{7f}",
            "/nul\0",
            "",
            "/emoji\u{1f600}",
        ];
        let mut cases = vec![entry()];
        for path in odd {
            cases.push(Entry {
                path,
                error: Some(path),
                ..entry()
            });
        }
        cases.push(Entry {
            client_ip: Some("::1"),
            upstream_server: None,
            status: 0,
            limiter: LimiterNote::Rejected("per_ip"),
            limit_scope: "-",
            error: Some("Downstream ConnectionClosed context: Peer"),
            ..entry()
        });
        cases.push(Entry {
            client_ip: None,
            limiter: LimiterNote::Delayed(500),
            ..entry()
        });
        cases.push(Entry {
            limiter: LimiterNote::DryRun("z"),
            status: 65535,
            ..entry()
        });
        for ms in [
            0.0, 1.0, 0.001, 0.01, 0.1, 0.5, 12.345, 1234.001, 17000.0, 99999.999,
        ] {
            cases.push(Entry {
                duration_ms: ms,
                ..entry()
            });
        }
        // Values a duration never takes still match (Debug itself).
        for ms in [0.0001, 1e-7, 1.5e20, f64::NAN, f64::INFINITY, -1.0, 0.12345] {
            cases.push(Entry {
                duration_ms: ms,
                ..entry()
            });
        }
        for e in &cases {
            let (ours, theirs) = (direct(e), via_tracing(e));
            assert_eq!(untimed(&ours), untimed(&theirs), "entry {e:?}");
        }
    }

    #[test]
    fn every_duration_in_microseconds_reads_as_debug() {
        let mut out = Vec::new();
        for micros in (0..3_000_000u64)
            .step_by(7)
            .chain([999_999_999, 12_345_678_901])
        {
            let ms = micros as f64 / 1000.0;
            out.clear();
            push_debug_f64(&mut out, ms);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{ms:?}"));
        }
    }

    #[test]
    fn the_timestamp_is_rfc3339_in_microseconds_like_the_subscribers() {
        let base = UNIX_EPOCH + std::time::Duration::from_secs(1_796_212_852);
        for offset_us in [0u64, 1, 999_999, 1_000_000, 59_999_999, 86_400_000_123] {
            let at = base + std::time::Duration::from_micros(offset_us);
            let mut out = Vec::new();
            write_timestamp(&mut out, at);
            let want = chrono::DateTime::<chrono::Utc>::from(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
        // And the subscriber's own stamp has that shape (same length, same separators).
        let line = via_tracing(&entry());
        let stamp = line.split(' ').next().unwrap();
        assert_eq!(stamp.len(), 27, "{line}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
    }
}
