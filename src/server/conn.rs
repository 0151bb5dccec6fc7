//! One connection's deadlines: time to its first byte, time from a request head's first byte to
//! its end (HTTP/1.1), and how long it may sit with no request in flight (HTTP/1.1 keep-alive and
//! HTTP/2 alike). The connection's reads, its service and a watchdog share one [`Activity`]. While
//! the listener is leaving (the drain delay), the service marks each HTTP/1.1 answer
//! `Connection: close` and asks an HTTP/2 connection for its GOAWAY.
//!
//! It must never cut a request in flight: a deadline runs only while no request is being served
//! (from the call of the service until its answer's body is done or dropped). Streamed answers
//! and caller bodies have deadlines of their own elsewhere.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The deadlines of a connection with no request in flight.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From accept (after the TLS handshake) to the first byte.
    pub first_byte: Duration,
    /// From the first byte of an HTTP/1.1 request head to its end.
    pub header: Duration,
    /// With no request in flight, after the first byte.
    pub idle: Duration,
}

/// Where a listener is in its life, as its owner sets it (through a `watch` channel); connections
/// watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd)]
pub enum Phase {
    Serving,
    /// The drain delay: connections are still accepted and served, but callers are asked to go
    /// elsewhere: every HTTP/1.1 answer carries `Connection: close` (the connection closes after
    /// it) and HTTP/2 connections get a GOAWAY.
    Leaving,
    /// Stop accepting; finish the requests in flight within the grace period, take no new ones.
    Draining,
}

/// No head is being read.
const NONE: u64 = u64::MAX;

/// What one connection is doing. Times are milliseconds since `started`, in atomics, because the
/// reader, the service and the watchdog touch them from different tasks without a lock.
pub(super) struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    /// When the first byte of the next HTTP/1.1 head arrived while the connection was idle.
    head_since: AtomicU64,
    read_any: AtomicBool,
    h2: AtomicBool,
    /// An HTTP/2 request came while the listener was leaving: send the GOAWAY.
    h2_leaving: Notify,
    /// What the watchdog decided ([`RUNNING`], [`EXPIRED`] or [`TOLD`]), and the connection's
    /// task to wake when it does.
    stop: AtomicU8,
    stop_waker: AtomicWaker,
}

/// The connection goes on.
const RUNNING: u8 = 0;
/// A deadline passed with no request in flight.
const EXPIRED: u8 = 1;
/// The listener is leaving or draining (see [`crate::server`]'s `told_to_close`).
const TOLD: u8 = 2;

/// Why a connection's watchdog stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Expired,
    Told,
}

/// The watchdog looks again at least this often, and at most a quarter of the shortest deadline
/// late: a request costs the watchdog nothing (no wake-up, no timer), only a few atomic stores.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Activity {
    /// `h2`: the protocol is known to be HTTP/2 already (TLS ALPN); otherwise the preface tells.
    pub(super) fn new(h2: bool) -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            read_any: AtomicBool::new(false),
            h2: AtomicBool::new(h2),
            h2_leaving: Notify::new(),
            stop: AtomicU8::new(RUNNING),
            stop_waker: AtomicWaker::new(),
        })
    }

    /// The watchdog's verdict, handed to the connection's task (and waking it).
    pub(super) fn stop(&self, why: Stop) {
        let v = match why {
            Stop::Expired => EXPIRED,
            Stop::Told => TOLD,
        };
        self.stop.store(v, Ordering::Release);
        self.stop_waker.wake();
    }

    /// A request is being served.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Back to running, for a new watchdog.
    pub(super) fn rearm(&self) {
        self.stop.store(RUNNING, Ordering::Release);
    }

    /// Resolves once the watchdog stopped the connection. Polling it is a flag read and a waker
    /// check: the connection's task polls it on every wake-up (each request), where it used to
    /// poll the watchdog's timer and the phase channel themselves.
    pub(super) fn stopped(&self) -> impl Future<Output = Stop> + '_ {
        std::future::poll_fn(move |cx| {
            self.stop_waker.register(cx.waker());
            match self.stop.load(Ordering::Acquire) {
                EXPIRED => Poll::Ready(Stop::Expired),
                TOLD => Poll::Ready(Stop::Told),
                _ => Poll::Pending,
            }
        })
    }

    /// The connection speaks HTTP/2 (as far as its first bytes or ALPN tell yet).
    pub(super) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Resolves once an HTTP/2 request came while the listener was leaving.
    pub(super) async fn h2_leaving(&self) {
        self.h2_leaving.notified().await
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NONE, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn on_read(&self, bytes: &[u8]) {
        if !self.read_any.swap(true, Ordering::Relaxed) && bytes.starts_with(b"PRI ") {
            // The HTTP/2 preface ("PRI * HTTP/2.0"); no HTTP/1.1 method is called PRI.
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::SeqCst) == 0
            && self.head_since.load(Ordering::SeqCst) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// When the connection is due to close, in ms since `started`; `None` while serving.
    fn deadline(&self, d: &Deadlines) -> Option<u64> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head != NONE && !self.h2.load(Ordering::Relaxed) {
            return Some(head + d.header.as_millis() as u64);
        }
        if !self.read_any.load(Ordering::Relaxed) {
            return Some(d.first_byte.as_millis() as u64);
        }
        Some(self.idle_since.load(Ordering::SeqCst) + d.idle.as_millis() as u64)
    }

    /// Resolves when the connection has been idle, silent or slow past its deadline. It looks
    /// every `LOOK_EVERY` (or a quarter of the shortest deadline), so a deadline that moved
    /// earlier is seen that late at most.
    pub(super) async fn expired(&self, d: Deadlines) {
        let shortest = d.first_byte.min(d.header).min(d.idle);
        let every = (shortest / 4).clamp(Duration::from_millis(10), LOOK_EVERY);
        loop {
            let now = self.now_ms();
            let wait = match self.deadline(&d) {
                Some(at) if now >= at => return,
                Some(at) => Duration::from_millis(at - now).min(every),
                None => every,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A request being served; dropping it marks the connection idle (when it was the last one).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connection's transport, noting each read in its [`Activity`].
pub(super) struct Watched<T> {
    io: T,
    act: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, act: Arc<Activity>) -> Watched<T> {
        Watched { io, act }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.act.on_read(new);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connection's service: each call is in flight until its answer's body is done or dropped.
/// While the listener is leaving, it tells the caller to go (see the file's doc).
#[derive(Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    act: Arc<Activity>,
    phase: watch::Receiver<Phase>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, act: Arc<Activity>, phase: watch::Receiver<Phase>) -> Tracked<S> {
        Tracked { inner, act, phase }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.act.begin();
        // A read lock on the phase per request: cheap, and the answer must follow the phase.
        let leaving = *self.phase.borrow() >= Phase::Leaving;
        let h2 = self.act.is_h2();
        if leaving && h2 {
            self.act.h2_leaving.notify_one();
        }
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
            close: leaving && !h2,
        }
    }
}

pin_project_lite::pin_project! {
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
        // Mark the answer `Connection: close` (HTTP/1.1 while the listener is leaving).
        close: bool,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        let close = *this.close;
        Poll::Ready(out.map(|mut resp| {
            if close {
                // hyper closes the connection once this answer is written.
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            resp.map(|inner| TrackedBody {
                inner,
                guard: Some(guard).flatten(),
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body; the request stops being in flight at its end.
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
