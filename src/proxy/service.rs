//! The listener's service: a `tower::Service` that sends Meta's webhook path (when configured) to
//! the webhook routes and every other path through the pipeline. Layers (timeouts, concurrency
//! limits, load shedding) go around it in one `ServiceBuilder`, in [`crate::run_with_admin`].
//!
//! The dispatch is one comparison rather than an axum `Router`: a router with only a fallback still
//! matched, boxed and cloned per request, which was a tenth of a cache hit's work.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;

use super::body::{InBody, PreAuthTurns};
use crate::gateway::Gateway;

/// The whole proxy for one listener; cheap to clone.
#[derive(Clone)]
pub struct ProxyService {
    gw: Gateway,
    /// The webhook path and its routes, when `[webhooks]` is configured.
    webhooks: Option<(Arc<str>, axum::Router)>,
    /// The few turns for bodies read before the caller is known (`server.preauth_reads`).
    preauth: PreAuthTurns,
}

impl ProxyService {
    pub fn new(gw: Gateway) -> ProxyService {
        let webhooks = gw.webhooks().map(|hub| {
            let routes = axum::Router::new()
                .route(hub.path(), crate::webhooks::routes())
                .with_state(hub.clone());
            (Arc::from(hub.path()), routes)
        });
        let preauth = PreAuthTurns(crate::body::Turns::new(gw.config().server.preauth_reads));
        ProxyService {
            gw,
            webhooks,
            preauth,
        }
    }
}

impl ProxyService {
    /// One request: the webhook routes for their exact path, the pipeline for every other path.
    fn dispatch<B: InBody>(&self, mut req: http::Request<B>) -> ProxyFuture {
        if let Some((path, routes)) = &self.webhooks {
            if req.uri().path() == &**path {
                let req = req.map(axum::body::Body::new);
                let routes = routes.clone();
                return Box::pin(async move {
                    use tower::ServiceExt;
                    routes.oneshot(req).await
                });
            }
        }
        // Only a request with a body can need a turn; reads (most calls) skip the extension map.
        if !http_body::Body::is_end_stream(req.body()) {
            req.extensions_mut().insert(self.preauth.clone());
        }
        // The newest config generation, kept to the end of this request (a reload swaps it).
        let gw = self.gw.current();
        Box::pin(async move { Ok(super::handle(gw, req).await) })
    }
}

type ProxyFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send + 'static>>;

/// For layers: `ServiceBuilder` stacks tower middleware around this.
impl<B: InBody> tower::Service<http::Request<B>> for ProxyService {
    type Response = Response;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> ProxyFuture {
        self.dispatch(req)
    }
}

/// For the listener when no layer wraps the service: hyper calls through `&self`, so a request
/// costs one `Gateway` clone, where the tower-to-hyper adapter would clone the whole service first.
impl<B: InBody> hyper::service::Service<http::Request<B>> for ProxyService {
    type Response = Response;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn call(&self, req: http::Request<B>) -> ProxyFuture {
        self.dispatch(req)
    }
}
