//! The request-head deadline (`client.header_timeout_ms`): the whole request head must arrive
//! within the time, else `408` and the connection is closed.
//!
//! Pingora 0.9 has no such deadline: it times out each *single* read (60 s by default), so a
//! client dripping one byte every few seconds can hold a connection for ever. Pingora offers no
//! hook between accepting a connection and parsing the head either, so this module wraps at the
//! two places it does expose:
//!
//! - [`HeadDeadlineApp`] is the listening service's [`ServerApp`]: it runs the same per-connection
//!   HTTP/1.1 loop as Pingora's own (`process_new_http` per request, keep-alive reuse) around
//!   [`HttpProxy`], after wrapping the accepted stream in a [`DeadlineStream`]. Before each request
//!   it tells the stream that a new head is expected.
//! - [`DeadlineStream`] arms a timer while a head is expected — from the accept for the first
//!   request, from the first byte of the head for the following ones on a kept-alive connection
//!   (the idle wait between requests is Pingora's keep-alive timeout, as in NGINX) — and disarms it
//!   when it has seen the blank line ending the head. If the timer fires first it writes a JSON
//!   `408` (only if part of a head arrived; a connection that sent nothing is just closed, as
//!   NGINX does) and fails the read, and Pingora closes the connection.
//!
//! Limits, stated honestly: the head end is found by scanning for `\r\n\r\n` (or `\n\n`), which is
//! how HTTP/1.x heads end; HTTP/2 (h2c) is not offered on the proxy listener, so every connection
//! goes through this loop. Body reads are never under this deadline (bodies have Pingora's per-read
//! timeout and `max_body_bytes`).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use pingora::protocols::Stream;

/// The body of the `408` answer.
const BODY_408: &str = r#"{"error":"request_timeout","message":"the request head was not received within header_timeout_ms"}"#;

/// Where the current deadline comes from (read at each new connection, so reloads apply).
pub trait HeaderTimeout: Send + Sync {
    /// The current `client.header_timeout`.
    fn header_timeout(&self) -> Duration;
}

/// The listening service's app: the proxy behind a per-connection request-head deadline.
pub struct HeadDeadlineApp<SV: ProxyHttp> {
    proxy: Arc<HttpProxy<SV>>,
    timeout: Arc<dyn HeaderTimeout>,
    timeouts: IntCounter,
}

impl<SV: ProxyHttp> HeadDeadlineApp<SV> {
    /// Wraps `proxy`; `timeouts` counts the connections closed by the deadline.
    pub fn new(
        proxy: HttpProxy<SV>,
        timeout: Arc<dyn HeaderTimeout>,
        timeouts: IntCounter,
    ) -> Self {
        Self {
            proxy: Arc::new(proxy),
            timeout,
            timeouts,
        }
    }
}

#[async_trait]
impl<SV> ServerApp for HeadDeadlineApp<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let expect_head = Arc::new(AtomicBool::new(true));
        let wrapped = DeadlineStream::new(
            stream,
            self.timeout.header_timeout(),
            Arc::clone(&expect_head),
            self.timeouts.clone(),
        );
        // The same HTTP/1.1 loop as Pingora's `ServerApp for HttpServerApp`, without h2c.
        let mut session = ServerSession::new_http1(Box::new(wrapped));
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(60));
        }
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, persistent)) = result.map(|r| r.consume()) {
            expect_head.store(true, Ordering::Release);
            let mut session = ServerSession::new_http1(stream);
            if let Some(p) = persistent {
                p.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// Finds the end of a request head across reads.
#[derive(Debug, Default, Clone, Copy)]
struct HeadScan {
    /// The last four bytes seen, most recent in the low byte.
    last: u32,
    /// Bytes of the current head seen so far.
    seen: usize,
}

impl HeadScan {
    const CRLFCRLF: u32 = u32::from_be_bytes(*b"\r\n\r\n");

    /// Feeds bytes; true once `\r\n\r\n` or `\n\n` has been seen (then the scan restarts).
    fn feed(&mut self, data: &[u8]) -> bool {
        self.seen += data.len();
        for &b in data {
            let prev = (self.last & 0xff) as u8;
            self.last = (self.last << 8) | u32::from(b);
            if self.last == Self::CRLFCRLF || (b == b'\n' && prev == b'\n' && self.seen > 1) {
                *self = HeadScan::default();
                return true;
            }
        }
        false
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for a head; `first` means the timer starts at once (first request), otherwise at
    /// the first byte.
    Head { first: bool },
    /// The head is in; no deadline.
    Body,
    /// The deadline passed: writing the 408 (from `written`), then failing reads.
    Expired { written: usize, reply: bool },
}

/// An accepted connection with the request-head deadline applied to its reads.
pub struct DeadlineStream {
    inner: Stream,
    timeout: Duration,
    expect_head: Arc<AtomicBool>,
    phase: Phase,
    scan: HeadScan,
    timer: Option<Pin<Box<Sleep>>>,
    reply: Vec<u8>,
    timeouts: IntCounter,
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .field("phase", &self.phase)
            .finish()
    }
}

impl DeadlineStream {
    /// Wraps `inner`; the first head is due `timeout` after now.
    pub fn new(
        inner: Stream,
        timeout: Duration,
        expect_head: Arc<AtomicBool>,
        timeouts: IntCounter,
    ) -> Self {
        expect_head.store(false, Ordering::Release);
        DeadlineStream {
            inner,
            timeout,
            expect_head,
            phase: Phase::Head { first: true },
            scan: HeadScan::default(),
            timer: Some(Box::pin(tokio::time::sleep(timeout))),
            reply: Vec::new(),
            timeouts,
        }
    }

    fn expire(&mut self) {
        let reply = self.scan.seen > 0 || matches!(self.phase, Phase::Head { first: false });
        self.timer = None;
        self.timeouts.inc();
        let peer = self
            .inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(
            target: "access",
            client = %peer,
            status = if reply { 408 } else { 0 },
            head_bytes = self.scan.seen,
            timeout_ms = self.timeout.as_millis() as u64,
            "request head not received within header_timeout_ms; closing"
        );
        if reply {
            self.reply = format!(
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                BODY_408.len(),
                BODY_408
            )
            .into_bytes();
        }
        self.phase = Phase::Expired { written: 0, reply };
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Phase::Expired { written, reply } = &mut self.phase else {
                return Poll::Ready(Ok(()));
            };
            if !*reply || *written >= self.reply.len() {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received within header_timeout_ms",
                )));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.reply[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expect_head.swap(false, Ordering::AcqRel) {
            // A new request on a kept-alive connection: the timer starts at its first byte.
            this.phase = Phase::Head { first: false };
            this.scan = HeadScan::default();
            this.timer = None;
        }
        if let Phase::Expired { reply, .. } = this.phase {
            return match this.poll_expired(cx) {
                Poll::Ready(Err(e)) if reply || e.kind() != io::ErrorKind::TimedOut => {
                    Poll::Ready(Err(e))
                }
                // Nothing of a head arrived: end quietly, like a client that left.
                Poll::Ready(_) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        if let Some(timer) = this.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                this.expire();
                return Pin::new(this).poll_read(cx, buf);
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let data = &buf.filled()[before..];
            if let Phase::Head { first } = this.phase {
                if !data.is_empty() {
                    if !first && this.timer.is_none() && this.scan.seen == 0 {
                        let deadline = Instant::now() + this.timeout;
                        this.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
                    }
                    if this.scan.feed(data) {
                        this.phase = Phase::Body;
                        this.timer = None;
                    } else if let Some(timer) = this.timer.as_mut() {
                        // Register the timer's waker for the next poll.
                        let _ = timer.as_mut().poll(cx);
                    }
                }
            }
        }
        res
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScan;

    #[test]
    fn finds_head_end_across_reads() {
        let mut s = HeadScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(!s.feed(b"\n"));
        assert!(!s.feed(b"\r"));
        assert!(s.feed(b"\nbody"));
        let mut s = HeadScan::default();
        assert!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        let mut s = HeadScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\nHost: a\n"));
        assert!(s.feed(b"\n"));
        let mut s = HeadScan::default();
        assert!(!s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert_eq!(s.seen, 25);
    }
}
