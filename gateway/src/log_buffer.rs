//! Buffered log output, like NGINX's `access_log ... buffer=64k flush=10ms`: each thread gathers
//! its log lines in its own buffer and writes the buffer to stderr with one system call when it
//! is full, when a flusher thread finds it non-empty (every [`FLUSH_INTERVAL`]), and at shutdown.
//!
//! Why not `tracing-appender`'s non-blocking writer: it hands every line to a writer thread over
//! a channel, which costs an allocation per line and, whenever the writer thread sleeps, a wake-up
//! system call from the request thread; on two cores shared with the load generator that made
//! the gateway slower than writing each line itself. A per-thread buffer costs a short,
//! uncontended lock and a copy per line, and nothing else.
//!
//! Warnings and errors are written through at once (after the lines buffered before them on the
//! same thread, so a thread's lines keep their order); lines of different threads may interleave
//! at buffer granularity. Lines buffered when the process is killed with SIGKILL are lost (at
//! most one flush interval's worth); every normal exit flushes them (see [`FlushGuard`]).
//!
//! An idle gateway does not wake the flusher: when a round finds every buffer empty, the flusher
//! waits until a line is buffered again (one atomic load per line tells the writer whether to
//! wake it), then resumes its rounds.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Bytes a thread gathers before it writes them out itself.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// How often the flusher thread writes out what the threads have gathered: the longest a line
/// waits on a quiet gateway.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every live thread's buffer, for the flusher.
static BUFFERS: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

/// A thread's own buffer; when the thread ends, what is left is written and the buffer leaves
/// the registry.
struct Local(Buffer);

impl Local {
    fn register() -> Self {
        let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(BUFFER_BYTES)));
        BUFFERS.lock().push(Arc::clone(&buffer));
        Local(buffer)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = write_out(&mut self.0.lock());
        BUFFERS.lock().retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// Writes `buffer` to stderr with one locked `write_all` (no other thread's bytes in between)
/// and empties it.
fn write_out(buffer: &mut Vec<u8>) -> io::Result<()> {
    if buffer.is_empty() {
        return Ok(());
    }
    let result = io::stderr().lock().write_all(buffer);
    buffer.clear();
    result
}

/// Writes out every thread's buffer; whether any held a line.
fn flush_all() -> bool {
    let buffers: Vec<Buffer> = BUFFERS.lock().clone();
    let mut wrote = false;
    for b in buffers {
        let mut buffer = b.lock();
        wrote |= !buffer.is_empty();
        let _ = write_out(&mut buffer);
    }
    wrote
}

/// The flusher is waiting for a line (set and cleared under [`IDLE_LOCK`]).
static FLUSHER_IDLE: AtomicBool = AtomicBool::new(false);
static IDLE_LOCK: Mutex<()> = Mutex::new(());
static IDLE_WAKE: Condvar = Condvar::new();

/// Called after a line was buffered: wakes the flusher if it waits for one.
fn line_buffered() {
    if FLUSHER_IDLE.load(Ordering::SeqCst) {
        wake_flusher();
    }
}

fn wake_flusher() {
    let _held = IDLE_LOCK.lock();
    FLUSHER_IDLE.store(false, Ordering::SeqCst);
    IDLE_WAKE.notify_all();
}

/// One round of the flusher: write out every buffer, and when all were empty wait (without a
/// timeout) until a line is buffered or `stop` is set.
fn flush_round(stop: &AtomicBool) {
    if flush_all() {
        return;
    }
    let mut held = IDLE_LOCK.lock();
    // Idle is announced before the last look, under the lock a writer takes to wake us: a
    // line buffered after that look sees the flag and waits for the lock until we wait.
    FLUSHER_IDLE.store(true, Ordering::SeqCst);
    if flush_all() {
        FLUSHER_IDLE.store(false, Ordering::SeqCst);
        return;
    }
    while FLUSHER_IDLE.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        IDLE_WAKE.wait(&mut held);
    }
}

/// The `tracing-subscriber` writer: info and below are buffered per thread, warnings and errors
/// go out at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedStderr;

/// One log line on its way into the current thread's buffer.
#[derive(Debug)]
pub struct Line {
    /// Write the line (and what the thread buffered before it) now.
    immediate: bool,
}

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        buffer_line(self.immediate, |buffer| buffer.extend_from_slice(line)).map(|()| line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends one info line, made by `line`, to the current thread's buffer (written out when full),
/// formatted in place: no copy of the line on its way.
pub fn append(line: impl FnOnce(&mut Vec<u8>)) {
    let _ = buffer_line(false, line);
}

/// Makes a line with `make` at the end of the current thread's buffer; writes the buffer out
/// when `immediate` or full, else tells an idle flusher there is a line.
fn buffer_line(immediate: bool, make: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
    let mut make = Some(make);
    let appended = LOCAL.try_with(|local| {
        let mut buffer = local.0.lock();
        if let Some(make) = make.take() {
            make(&mut buffer);
        }
        if immediate || buffer.len() >= BUFFER_BYTES {
            write_out(&mut buffer)
        } else {
            drop(buffer);
            line_buffered();
            Ok(())
        }
    });
    match (appended, make) {
        (Ok(result), _) => result,
        // The thread is ending and its buffer is gone: write the line itself.
        (Err(_), Some(make)) => {
            let mut own = Vec::new();
            make(&mut own);
            io::stderr().lock().write_all(&own)
        }
        (Err(_), None) => Ok(()),
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { immediate: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            immediate: *meta.level() <= Level::WARN,
        }
    }
}

/// Keeps the flusher thread running; dropping it stops the thread and writes out every buffer.
#[derive(Debug)]
pub struct FlushGuard {
    stop: Arc<AtomicBool>,
    flusher: Option<JoinHandle<()>>,
}

/// Starts the flusher thread.
pub fn start() -> FlushGuard {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let flusher = std::thread::Builder::new()
        .name("gateway-log".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(FLUSH_INTERVAL);
                flush_round(&flag);
            }
        })
        .map_err(|e| eprintln!("gateway: log flusher thread not started ({e}); lines are written when a buffer fills"))
        .ok();
    FlushGuard { stop, flusher }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        wake_flusher();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        flush_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the registry and the flusher handshake: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn buffered_here() -> usize {
        LOCAL.with(|l| l.0.lock().len())
    }

    #[test]
    fn info_lines_wait_in_the_thread_buffer_and_a_warning_takes_them_out() {
        let _serial = SERIAL.lock();
        std::thread::spawn(|| {
            Line { immediate: false }.write_all(b"info line\n").unwrap();
            assert_eq!(buffered_here(), 10);
            Line { immediate: true }.write_all(b"warn line\n").unwrap();
            assert_eq!(buffered_here(), 0, "a warning writes out what was buffered");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_buffer_is_written_by_its_thread() {
        let _serial = SERIAL.lock();
        std::thread::spawn(|| {
            let line = vec![b'x'; 1000];
            let mut w = BufferedStderr.make_writer();
            for _ in 0..(BUFFER_BYTES / 1000 + 1) {
                w.write_all(&line).unwrap();
            }
            assert!(buffered_here() < BUFFER_BYTES);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_flusher_empties_every_buffer_and_an_ended_thread_leaves_the_registry() {
        let _serial = SERIAL.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            BufferedStderr.make_writer().write_all(b"line\n").unwrap();
            tx.send(LOCAL.with(|l| Arc::clone(&l.0))).unwrap();
            done_rx.recv().unwrap();
        });
        let buffer = rx.recv().unwrap();
        assert_eq!(buffer.lock().len(), 5);
        flush_all();
        assert!(buffer.lock().is_empty());
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(!BUFFERS.lock().iter().any(|b| Arc::ptr_eq(b, &buffer)));
    }

    #[test]
    fn an_idle_flusher_waits_for_a_line_and_a_buffered_line_wakes_it() {
        let _serial = SERIAL.lock();
        flush_all();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let flusher = std::thread::spawn(move || {
            flush_round(&flag);
            done_tx.send(()).unwrap();
        });
        // Nothing buffered: the round waits (bounded look, then the wake-up test).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !FLUSHER_IDLE.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            FLUSHER_IDLE.load(Ordering::SeqCst),
            "the round did not go idle"
        );
        assert!(
            done_rx.try_recv().is_err(),
            "an idle round returned without a line"
        );
        let buffer = std::thread::spawn(|| {
            append(|out| out.extend_from_slice(b"woke\n"));
            LOCAL.with(|l| Arc::clone(&l.0))
        })
        .join()
        .unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a buffered line wakes the idle flusher");
        flusher.join().unwrap();
        assert!(!FLUSHER_IDLE.load(Ordering::SeqCst));
        // The next round writes it out (the ended thread's buffer was written when it ended).
        flush_all();
        assert!(buffer.lock().is_empty());
    }

    #[test]
    fn stopping_wakes_an_idle_flusher() {
        let _serial = SERIAL.lock();
        flush_all();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let flusher = std::thread::spawn(move || flush_round(&flag));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !FLUSHER_IDLE.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
        wake_flusher();
        flusher.join().unwrap();
    }
}
