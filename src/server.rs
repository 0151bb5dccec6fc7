//! Listening: the accept loop (plain TCP or rustls), HTTP/1.1 and HTTP/2 connection settings, each
//! connection's deadlines (`conn`), the stop signals, and the listener's side of a drain (tell
//! callers to leave while still serving, then stop accepting and let in-flight requests finish
//! within a grace period).
//!
//! It owns no request logic: every connection is served by the service it is given, and the order
//! of a drain across listeners is its caller's ([`crate::run_draining`]). It never binds a socket
//! itself, so tests hand it `127.0.0.1:0` listeners.

mod conn;
pub mod overload;

use std::future::Future;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

pub use conn::{Deadlines, Phase};
pub use overload::{Capacity, InFlightLayer};

/// How long a connection closed for a deadline gets to say goodbye (an HTTP/2 GOAWAY) before it
/// is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub grace: Duration,
    /// Above these hyper itself refuses the request head with a bare 431; the router's own
    /// Graph-shaped checks sit below them.
    pub max_headers: usize,
    pub max_head_bytes: usize,
    pub deadlines: Deadlines,
    /// HTTP/2 keep-alive pings: interval, and how long one may go unanswered.
    pub h2_ping: (Duration, Duration),
    /// Connections held at once, and connections over that answered with a 503 at once (more wait
    /// in the kernel's accept queue).
    pub max_connections: usize,
    pub reject_slots: usize,
}

impl ServeOptions {
    /// The listener settings `[server]` gives, for the proxy (with `tls`) or the admin listener.
    pub fn new(s: &crate::config::Server, tls: Option<TlsAcceptor>) -> ServeOptions {
        ServeOptions {
            tls,
            grace: s.shutdown_grace,
            // hyper's hard limits sit above the Graph-shaped 414/431 checks in the pipeline.
            max_headers: s.max_headers * 2,
            max_head_bytes: (s.max_uri + s.max_header_bytes) as usize * 2,
            deadlines: Deadlines {
                first_byte: s.first_byte_timeout,
                header: s.header_timeout,
                idle: s.keepalive_timeout,
            },
            h2_ping: (s.h2_ping_interval, s.h2_ping_timeout),
            max_connections: Capacity::of(s).connections,
            reject_slots: overload::REJECT_SLOTS,
        }
    }

    /// The admin listener's settings: no TLS, its own small connection cap and no 503s (probes
    /// and scrapes retry; what it holds is kept out of the proxy's share of open files).
    pub fn admin(s: &crate::config::Server) -> ServeOptions {
        ServeOptions {
            max_connections: overload::ADMIN_MAX_CONNECTIONS,
            reject_slots: 0,
            ..ServeOptions::new(s, None)
        }
    }
}

/// When the drain began, shared with readiness (`/readyz` answers 503 from then on).
#[derive(Clone, Debug, Default)]
pub struct Draining(Arc<OnceLock<Instant>>);

impl Draining {
    /// Marks the drain begun (the first call counts).
    pub fn start(&self) {
        let _ = self.0.set(Instant::now());
    }

    /// How long ago the drain began; `None` while serving.
    pub fn since(&self) -> Option<Duration> {
        self.0.get().map(Instant::elapsed)
    }
}

/// Serves `service` on `listener` until its owner sets [`Phase::Draining`] on `phase` (or drops
/// the sender), then drains connections for up to `opts.grace`.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    opts: ServeOptions,
    phase: watch::Receiver<Phase>,
) -> io::Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let d = opts.deadlines;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // No header timer of hyper's: the connection's watchdog (`conn::Activity`) holds the
        // head's deadline. hyper's armed a boxed timer on every keep-alive request and dropped it
        // at the head's end: about 1.5k instructions a request, and timer-wheel traffic at a
        // thousand connections (docs/benchmarks.md, issue #17).
        .header_read_timeout(None)
        .max_headers(opts.max_headers)
        .max_buf_size(opts.max_head_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(opts.h2_ping.0)
        .keep_alive_timeout(opts.h2_ping.1)
        .max_header_list_size(opts.max_head_bytes as u32);
    // Set once the grace period is over: connections still open are dropped.
    let (closed_tx, closed) = watch::channel(false);
    // Every connection task holds a sender; the drain is over when the last one is dropped.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let rejects = Arc::new(Semaphore::new(opts.reject_slots));
    let mut stop_rx = phase.clone();
    let shutdown = async move {
        let _ = stop_rx.wait_for(|p| *p >= Phase::Draining).await;
    };
    tokio::pin!(shutdown);
    loop {
        // At the cap with every refusal slot busy, stop accepting until one frees (only this loop
        // takes permits, so one is free after the wait).
        if slots.available_permits() == 0 && rejects.available_permits() == 0 {
            tokio::select! {
                _ = slots.acquire() => {}
                _ = rejects.acquire() => {}
                _ = &mut shutdown => break,
            }
        }
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let tls = opts.tls.clone();
        let watch = Watch {
            phase: phase.clone(),
            closed: closed.clone(),
        };
        let alive = alive.clone();
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let svc = service.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let _held = (alive, slot);
                accept_and_serve(&builder, stream, tls, svc, d, watch).await
            });
        } else if let Ok(slot) = rejects.clone().try_acquire_owned() {
            let builder = builder.clone();
            let d = Deadlines {
                first_byte: d.first_byte.min(overload::REJECT_FIRST_BYTE),
                ..d
            };
            tokio::spawn(async move {
                let _held = (alive, slot);
                let svc = overload::reject_service();
                let serve = accept_and_serve(&builder, stream, tls, svc, d, watch);
                let _ = tokio::time::timeout(overload::REJECT_DEADLINE, serve).await;
            });
        }
    }
    drop(listener);
    drop(alive);
    let started = Instant::now();
    if tokio::time::timeout(opts.grace, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?opts.grace, "grace period over; closing remaining connections");
        let _ = closed_tx.send(true);
    } else {
        tracing::debug!(took = ?started.elapsed(), "connections drained");
    }
    Ok(())
}

/// What a connection watches: its listener's phase, and the end of the grace period.
struct Watch {
    phase: watch::Receiver<Phase>,
    closed: watch::Receiver<bool>,
}

/// The TLS handshake (within the first-byte deadline) when TLS is on, then [`serve_connection`].
async fn accept_and_serve<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    svc: S,
    d: Deadlines,
    watch: Watch,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tls {
        None => serve_connection(builder, stream, false, svc, d, watch).await,
        Some(acceptor) => {
            let Ok(Ok(tls)) = tokio::time::timeout(d.first_byte, acceptor.accept(stream)).await
            else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_connection(builder, tls, h2, svc, d, watch).await
        }
    }
}

/// One connection, until it ends, passes a deadline with no request in flight, or the server
/// stops. While leaving, an HTTP/2 connection is shut down gracefully (GOAWAY) and an HTTP/1.1 one
/// keeps serving, each answer marked `Connection: close` (by [`conn::Tracked`]). Connections
/// without upgrade support: graphgate never switches protocols, and the upgradeable wrapper costs
/// state and a check on every request.
async fn serve_connection<T, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: T,
    h2: bool,
    svc: S,
    d: Deadlines,
    watch: Watch,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Watch { phase, mut closed } = watch;
    let act = conn::Activity::new(h2);
    let io = TokioIo::new(conn::Watched::new(io, act.clone()));
    let svc = conn::Tracked::new(svc, act.clone(), phase.clone());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let expired = loop {
        // The watchdog is a task of its own (aborted with the connection): its timer and the
        // phase channel are polled when they fire, not on every wake-up of this task. At a
        // thousand connections those were a thousand timers touched once per request (#17).
        let watchdog = {
            let (act, mut phase) = (act.clone(), phase.clone());
            AbortOnDrop(tokio::spawn(async move {
                let why = tokio::select! {
                    _ = act.expired(d) => conn::Stop::Expired,
                    _ = told_to_close(&mut phase, &act) => conn::Stop::Told,
                };
                act.stop(why);
            }))
        };
        let why = tokio::select! {
            biased;
            _ = conn.as_mut() => return,
            why = act.stopped() => why,
        };
        drop(watchdog);
        // A request that this task took up while the watchdog decided is not cut: watch again.
        if why == conn::Stop::Expired && act.in_flight() {
            act.rearm();
            continue;
        }
        break why == conn::Stop::Expired;
    };
    // Stop taking requests: HTTP/1.1 closes once idle, HTTP/2 sends GOAWAY and finishes its streams.
    conn.as_mut().graceful_shutdown();
    if expired {
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
    } else {
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = closed.wait_for(|c| *c) => {}
        }
    }
}

/// A task that ends with its owner (a connection's watchdog).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves when the connection should shut down gracefully: when its listener stops accepting,
/// or (HTTP/2) when the listener starts leaving, at once or at the connection's next request (its
/// protocol may be known only from its first bytes). An HTTP/1.1 connection is told per answer
/// instead, so a caller racing a request onto an idle keep-alive connection is never cut off.
async fn told_to_close(phase: &mut watch::Receiver<Phase>, act: &conn::Activity) {
    if phase.wait_for(|p| *p >= Phase::Leaving).await.is_err() {
        return; // the owner is gone: stop
    }
    if act.is_h2() {
        return;
    }
    tokio::select! {
        _ = phase.wait_for(|p| *p >= Phase::Draining) => {}
        _ = act.h2_leaving() => {}
    }
}

/// A rustls acceptor for the configured certificate and key (built as `check-config` checks them).
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    Ok(TlsAcceptor::from(Arc::new(
        crate::config::tls::server_config(files)?,
    )))
}

/// Stop requests (SIGTERM or Ctrl-C), counted from now on: the first future resolves on the
/// first, which starts the drain; the second on the next, which skips the rest of the drain delay.
/// Both stay resolved once resolved. The handlers are installed before this returns, so a signal
/// that comes early is counted rather than killing the process.
pub fn signals() -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let (count_tx, count) = watch::channel(0u32);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let streams = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        if let (Ok(mut term), Ok(mut int)) = streams {
            tokio::spawn(async move {
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    };
                    count_tx.send_modify(|n| *n += 1);
                    tracing::info!(signal = name, count = *count_tx.borrow(), "stop requested");
                }
            });
        } else {
            tracing::warn!("cannot install the SIGTERM/SIGINT handlers");
        }
        // SIGHUP's default is an abrupt exit (no drain, no saved state). Its handler goes in here,
        // before anything is served, so an early one is harmless; the gateway's reload task reads
        // SIGHUP once it runs (tokio keeps a handler installed for the life of the process).
        let _ = signal(SignalKind::hangup());
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            count_tx.send_modify(|n| *n += 1);
        }
    });
    let at_least = |n: u32| {
        let mut rx = count.clone();
        async move {
            if rx.wait_for(|c| *c >= n).await.is_err() {
                // No handler: only the end of the process stops it.
                std::future::pending::<()>().await;
            }
        }
    };
    (at_least(1), at_least(2))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
