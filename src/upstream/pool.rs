//! graphgate's own connection pool to Meta, over `hyper::client::conn`: dialing (TCP, TLS, the
//! HTTP/2 preface), HTTP/1 connections kept idle for reuse, the one shared HTTP/2 connection,
//! sending one request on them, and [`UpstreamBody`], which hands an HTTP/1 connection back to
//! the pool at the body's end and ends with [`BodyError::Stalled`] when Meta goes quiet mid-body.
//!
//! It must never choose a destination (the scheme and authority are fixed when the pool is built
//! from config), never pool a connection that is closed or still busy with an upload, never keep
//! more idle connections than configured, and never decide what a failure means for the caller
//! (it reports a [`SendError`]; the facade maps it).
//!
//! There is one upstream, so there is no per-host map to look up and no key to hash.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::sync::MutexExt;

/// How often an HTTP/2 connection to Meta is pinged, and how long a ping may go unanswered.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections to the upstream: how to open one, and those free for a request.
pub(super) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    scheme: Scheme,
    authority: Authority,
    /// `Host` of every HTTP/1 request: the authority without a default port.
    host: HeaderValue,
    /// HTTP/1 connections, the most recently used last (it is the likeliest to be still open).
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, when Meta chose HTTP/2: one carries every request.
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task that closes connections idle past `idle_timeout` runs.
    sweeping: AtomicBool,
    /// Longest silence between two chunks of an answer's body (`upstream.body_idle_timeout`).
    body_idle: Duration,
}

struct Idle {
    conn: http1::SendRequest<Body>,
    since: Instant,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// Why a request got no response head.
pub(super) enum SendError {
    /// No connection could be made: nothing reached Meta.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or the answer awaited.
    Http(hyper::Error),
    /// The connection failed before the request went out (hyper handed it back).
    NotSent(hyper::Error),
}

impl Pool {
    /// An empty pool for one upstream; `host` is the `Host` value of HTTP/1 requests.
    pub(super) fn new(
        connector: HttpsConnector<HttpConnector>,
        scheme: Scheme,
        authority: Authority,
        host: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
        body_idle: Duration,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            scheme,
            authority,
            host,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            max_idle,
            idle_timeout,
            sweeping: AtomicBool::new(false),
            body_idle,
        })
    }

    /// One request on a pooled or new connection. A reused connection that Meta closed before
    /// the request went out is replaced once, by a fresh one: hyper hands the unsent request back.
    /// `handed_over` is set while the request is in a connection's hands (it may reach Meta).
    pub(super) async fn exchange(
        self: &Arc<Self>,
        mut req: Request<Body>,
        handed_over: &AtomicBool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut retried = false;
        loop {
            let pooled = if retried { None } else { self.checkout().await };
            let (conn, reused) = match pooled {
                Some(c) => (c, true),
                // Boxed: connecting (TCP, TLS, HTTP/2 preface) is a future of kilobytes, which
                // every request's future would otherwise carry, and copy, for a rare event.
                None => (Box::pin(self.connect()).await?, false),
            };
            handed_over.store(true, Ordering::Relaxed);
            let sent = match conn {
                Conn::H2(mut c) => {
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(self.scheme.clone());
                    parts.authority = Some(self.authority.clone());
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() =
                        Uri::from_parts(parts).map_err(|e| SendError::Connect(e.into()))?;
                    c.try_send_request(req).await.map(|resp| {
                        resp.map(|inner| UpstreamBody::new(inner, None, self.body_idle))
                    })
                }
                Conn::H1(mut c) => {
                    if req.uri().scheme().is_some() {
                        *req.uri_mut() = Uri::from(
                            req.uri()
                                .path_and_query()
                                .cloned()
                                .unwrap_or_else(|| PathAndQuery::from_static("/")),
                        );
                    }
                    req.headers_mut().insert(header::HOST, self.host.clone());
                    let sent = c.try_send_request(req).await;
                    let back = Some((self.clone(), c));
                    let idle = self.body_idle;
                    sent.map(|resp| resp.map(|inner| UpstreamBody::new(inner, back, idle)))
                }
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused && !retried => {
                        retried = true;
                        req = unsent;
                        handed_over.store(false, Ordering::Relaxed);
                    }
                    Some(_) => return Err(SendError::NotSent(e.into_error())),
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// A pooled connection that is open and ready, if there is one.
    async fn checkout(&self) -> Option<Conn> {
        {
            let mut h2 = self.h2.lock_unpoisoned();
            match h2.as_ref() {
                Some(c) if !c.is_closed() => return Some(Conn::H2(c.clone())),
                Some(_) => *h2 = None,
                None => {}
            }
        }
        loop {
            let idle = self.idle.lock_unpoisoned().pop()?;
            if idle.since.elapsed() > self.idle_timeout {
                continue;
            }
            let mut conn = idle.conn;
            // Usually ready at once; just after a response it may take the connection's task
            // one turn to finish reading it. A closed connection answers an error: drop it.
            if conn.ready().await.is_ok() {
                return Some(Conn::H1(conn));
            }
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Conn, SendError> {
        self.start_sweeping();
        let target = Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.scheme = Some(self.scheme.clone());
            p.authority = Some(self.authority.clone());
            p.path_and_query = Some(PathAndQuery::from_static("/"));
            p
        })
        .map_err(|e| SendError::Connect(e.into()))?;
        let stream = self
            .connector
            .clone()
            .call(target)
            .await
            .map_err(SendError::Connect)?;
        if stream.connected().is_negotiated_h2() {
            // Pings find a connection that died silently (no FIN, no RST): it closes, and the next
            // call opens a new one instead of waiting for the kernel to give up.
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(stream)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            drive(conn);
            *self.h2.lock_unpoisoned() = Some(send.clone());
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = http1::handshake(stream)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            drive(conn);
            Ok(Conn::H1(send))
        }
    }

    fn put(&self, conn: http1::SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock_unpoisoned();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle longer than `idle_timeout`, from a task that ends with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let timeout = pool.idle_timeout;
                pool.idle
                    .lock_unpoisoned()
                    .retain(|i| i.since.elapsed() <= timeout && !i.conn.is_closed());
            }
        });
    }
}

/// Runs a connection's I/O in its own task until Meta or the pool closes it.
fn drive(conn: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

/// Why an answer's body from Meta ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No chunk came for `upstream.body_idle_timeout`; the connection is dropped with the body.
    #[error("Meta's answer body stalled: nothing for {0:?}")]
    Stalled(Duration),
    #[error("Meta's answer body failed: {0}")]
    Transport(#[from] hyper::Error),
}

/// A response body from Meta. An HTTP/1 connection goes back to the pool once the body has been
/// read to its end; a body dropped before that takes its connection with it (hyper closes it).
/// Once a poll finds no chunk ready, the next must come within `idle`: otherwise the body ends
/// with [`BodyError::Stalled`], whoever reads it (a caller's stream, the rewrite step's bounded
/// read, a cache fill).
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, http1::SendRequest<Body>)>,
    ended: bool,
    idle: Duration,
    /// Armed when a poll finds no chunk ready after one did (or at the first). Boxed: a timer is
    /// large, and most bodies arrive whole before it is needed.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last poll found nothing (the timer then runs).
    waiting: bool,
    stalled: bool,
}

impl UpstreamBody {
    fn new(
        inner: Incoming,
        back: Option<(Arc<Pool>, http1::SendRequest<Body>)>,
        idle: Duration,
    ) -> Self {
        UpstreamBody {
            inner,
            back,
            ended: false,
            idle,
            timer: None,
            waiting: false,
            stalled: false,
        }
    }

    /// The idle timeout, when the body ended because Meta stopped sending it.
    pub fn stalled(&self) -> Option<Duration> {
        self.stalled.then_some(self.idle)
    }

    fn release(&mut self) {
        let Some((pool, mut conn)) = self.back.take() else {
            return;
        };
        if conn.is_ready() {
            pool.put(conn);
            return;
        }
        // Meta answered before the caller's upload ended (an early error): the connection is
        // free only once the rest of the request is sent. Pooling it now would make the next call
        // wait for that upload.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let wait = pool.idle_timeout;
        rt.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, conn.ready()).await {
                pool.put(conn);
            }
        });
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.stalled {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.waiting = false;
                if frame.is_none() {
                    self.ended = true;
                    self.release();
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Transport)))
            }
            Poll::Pending => {
                // The silence counts from the first poll that found nothing, not from the last
                // chunk: a caller that reads slowly is not Meta stalling.
                let idle = self.idle;
                if !self.waiting {
                    self.waiting = true;
                    let at = tokio::time::Instant::now() + idle;
                    match self.timer.as_mut() {
                        Some(t) => t.as_mut().reset(at),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                let Some(timer) = self.timer.as_mut() else {
                    return Poll::Pending;
                };
                ready!(timer.as_mut().poll(cx));
                // Dropping the body (and with it the connection) is what tells Meta; the reader
                // gets the error once and the end after it.
                self.stalled = true;
                Poll::Ready(Some(Err(BodyError::Stalled(idle))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stalled || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) is often dropped unread: it is complete all the same.
        if self.ended || http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}
