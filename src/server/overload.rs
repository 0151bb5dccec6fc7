//! Load shedding: how many connections and requests in flight the proxy takes (`server.
//! max_connections`, `server.max_in_flight`, both lowered to fit the process's open-file limit with
//! a reserve kept for the admin listener), and the Graph-shaped 503 with `Retry-After` that callers
//! beyond them get at once.
//!
//! A request joins the in-flight count once its caller is known ([`InFlightSlot::join`], called by
//! the pipeline right after authentication): work done before that (waiting for a pre-auth turn, a
//! form body read to find a key, a webhook body read before its signature is checked) has its own,
//! smaller budgets (`server.preauth_reads`, the connection cap) and must never shed keyed callers.
//!
//! It must never queue work it refuses: a refused request costs no upstream call, no body read and
//! no memory beyond its head.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Server;
use crate::error::GatewayError;
use crate::sync::MutexExt;

/// Open files kept out of the proxy's share: the admin listener's connections
/// ([`ADMIN_MAX_CONNECTIONS`]), connections being refused ([`REJECT_SLOTS`]), Redis, the state
/// file, the webhook queue, listeners and logs.
pub const FD_RESERVE: u64 = 128;
/// The admin listener's own cap; it is for probes and scrapes, not for load.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Connections over the cap that are answered with a 503 at once; more than that wait in the
/// kernel's accept queue.
pub const REJECT_SLOTS: usize = 16;
/// A refused connection gets this long to send its first byte (a caller sends its request at once;
/// a silent connection must not keep a refusal slot)...
pub const REJECT_FIRST_BYTE: Duration = Duration::from_millis(200);
/// ...and this long in all to send its request and read the 503.
pub const REJECT_DEADLINE: Duration = Duration::from_secs(1);
/// What a shed caller is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The proxy's connection and in-flight caps after fitting them to the open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub connections: usize,
    pub in_flight: usize,
}

impl Capacity {
    /// The configured caps, lowered when the process's soft `RLIMIT_NOFILE` cannot hold them: a
    /// quarter of what is left after [`FD_RESERVE`] goes to requests in flight (each may hold a
    /// connection to Meta, in use or idle in the pool), the rest to callers' connections.
    pub fn of(s: &Server) -> Capacity {
        Capacity::fit(s.max_connections, s.max_in_flight, open_file_limit())
    }

    fn fit(connections: usize, in_flight: usize, nofile: Option<u64>) -> Capacity {
        let Some(nofile) = nofile else {
            return Capacity {
                connections,
                in_flight,
            };
        };
        let budget = nofile.saturating_sub(FD_RESERVE).max(4) as usize;
        let in_flight = in_flight.min(budget / 4).max(1);
        Capacity {
            connections: connections.min(budget - in_flight).max(1),
            in_flight,
        }
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` when unknown or unlimited.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The answer to a caller shed for `what`.
pub fn overloaded(what: &'static str) -> Response {
    shed(what).into_response()
}

/// The error of a caller shed for `what` (a 503 with `Retry-After`).
pub fn shed(what: &'static str) -> GatewayError {
    GatewayError::Overloaded {
        what,
        retry_after: RETRY_AFTER,
    }
}

/// The service of a connection over the cap: every request gets the 503, and the connection closes.
pub fn reject_service() -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = std::future::Ready<Result<Response, Infallible>>,
> + Clone {
    hyper::service::service_fn(|_req| {
        let mut resp = overloaded("too many connections");
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        std::future::ready(Ok(resp))
    })
}

/// A tower layer that caps the requests in flight: it hands each request an [`InFlightSlot`] (in
/// its extensions) that the pipeline joins once the caller is known; beyond the cap, a 503 at once.
#[derive(Clone)]
pub struct InFlightLayer(Arc<Semaphore>);

impl InFlightLayer {
    pub fn new(max: usize) -> InFlightLayer {
        InFlightLayer(Arc::new(Semaphore::new(max)))
    }
}

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            permits: self.0.clone(),
        }
    }
}

/// See [`InFlightLayer`]. A request is in flight from [`InFlightSlot::join`] until its answer's
/// body is done or dropped.
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

type InFlightFuture =
    Pin<Box<dyn Future<Output = Result<Response<PermitBody>, Infallible>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for InFlight<S>
where
    S: tower::Service<http::Request<B>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<PermitBody>;
    type Error = Infallible;
    type Future = InFlightFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> InFlightFuture {
        // Shed at once while full, before any work: a keyed caller would be refused at `join`.
        if self.permits.available_permits() == 0 {
            let resp = overloaded("too many requests in flight");
            return Box::pin(std::future::ready(Ok(
                resp.map(|inner| PermitBody { inner, slot: None })
            )));
        }
        let slot = InFlightSlot(Arc::new(Slot {
            permits: self.permits.clone(),
            held: Mutex::new(None),
        }));
        req.extensions_mut().insert(slot.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| PermitBody {
                inner,
                slot: Some(slot),
            }))
        })
    }
}

/// A request's place among those in flight, taken once its caller is known and held until its
/// answer's body ends (the slot is kept by [`PermitBody`]).
#[derive(Clone)]
pub struct InFlightSlot(Arc<Slot>);

struct Slot {
    permits: Arc<Semaphore>,
    /// Set once by `join`; the lock is only held to store or drop the permit.
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl InFlightSlot {
    /// Joins the in-flight count; `false` when it is full (the caller gets [`overloaded`]).
    pub fn join(&self) -> bool {
        let mut held = self.0.held.lock_unpoisoned();
        if held.is_some() {
            return true;
        }
        match self.0.permits.clone().try_acquire_owned() {
            Ok(p) => {
                *held = Some(p);
                true
            }
            Err(_) => false,
        }
    }

    fn leave(&self) {
        self.0.held.lock_unpoisoned().take();
    }
}

pin_project_lite::pin_project! {
    /// An answer's body holding its request's place in flight until it ends.
    pub struct PermitBody {
        #[pin]
        inner: Body,
        slot: Option<InFlightSlot>,
    }
}

impl http_body::Body for PermitBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            if let Some(slot) = this.slot.take() {
                slot.leave();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    // The configured caps hold when the open-file limit can carry them; a low limit lowers both,
    // keeping the reserve free and a quarter of the rest for requests in flight.
    #[test]
    fn caps_are_fitted_to_the_open_file_limit() {
        let c = Capacity::fit(10_000, 1024, None);
        assert_eq!((c.connections, c.in_flight), (10_000, 1024));
        let c = Capacity::fit(10_000, 1024, Some(1_000_000));
        assert_eq!((c.connections, c.in_flight), (10_000, 1024));
        let c = Capacity::fit(10_000, 1024, Some(256));
        assert_eq!((c.connections, c.in_flight), (96, 32));
        assert!(c.connections as u64 + c.in_flight as u64 + FD_RESERVE <= 256);
        let c = Capacity::fit(10_000, 1024, Some(10));
        assert!(c.connections >= 1 && c.in_flight >= 1);
    }
}
