//! graphgate: a reverse proxy that internal services put in front of Meta's Graph API (the
//! WhatsApp Business Management API). It holds the system-user tokens, spends each WhatsApp
//! Business Account's call budget exactly as Meta counts it, and answers repeated reads from cache.
//!
//! # Layout
//! - [`config`]: the TOML file and `GRAPHGATE_*` overrides, validated into a typed [`config::Config`].
//! - [`error`]: the one mapping from graphgate's failures to Graph-shaped HTTP errors.
//! - [`target`]: checks and decodes the request path and query; strips caller credentials.
//! - [`auth`]: client keys, WABA and method allowlists, and which token a call uses.
//! - [`classify`]: which of Meta's budgets (the seed's rate-limit table) a call spends.
//! - [`cache`]: the response cache (moka): keys, TTL rules, coalescing, invalidation, stale answers.
//! - [`upstream`]: the pooled rustls client to Meta, header hygiene, token and `appsecret_proof`.
//! - [`rewrite`]: paging links rewritten to the proxy, without credentials.
//! - [`clock`]: injected time (system or manual) for the limiter.
//! - [`limits`]: exact rolling-window buckets, Meta's feedback, wait mode, client quotas, persistence;
//!   [`limits::redis`] shares buckets, learned facts and cache invalidations with other replicas.
//! - [`probe`]: start-up and periodic checks of whether `active = "auto"` WABAs have a registered number.
//! - [`proxy`]: the request pipeline, check -> authenticate -> classify -> authorize -> cache ->
//!   limit -> upstream -> rewrite -> respond.
//! - [`webhooks`]: Meta's webhooks: handshake, signatures, cache invalidation, durable fan-out.
//! - [`server`]: accept loop, TLS, HTTP/1.1 + HTTP/2 settings, graceful shutdown.
//! - [`telemetry`]: tracing setup (JSON lines or text).
//! - [`metrics`]: the Prometheus registry of one gateway; labels only from config or fixed sets.
//! - [`admin`]: the admin listener: health, readiness, `/metrics`, limits and cache JSON, status page.
//! - [`sim`]: a local twin of the Graph API for tests, benchmarks and the demo.
//! - [`demo`]: the simulator and the proxy in one process, ready for curl.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod classify;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod rewrite;
pub mod server;
pub mod sim;
pub mod sync;
pub mod target;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use proxy::Gateway;

/// The whole proxy as a hyper service: Meta's webhook path (when configured) goes to its axum
/// routes, every other path is a Graph path and runs the pipeline. The dispatch is this one
/// comparison rather than an axum `Router`: a router with only a fallback still matched, boxed
/// and cloned per request, which was a tenth of a cache hit's work.
#[derive(Clone)]
pub struct ProxyService {
    gw: Gateway,
    /// The webhook path and its routes, when `[webhooks]` is configured.
    webhooks: Option<(Arc<str>, axum::Router)>,
}

impl ProxyService {
    pub fn new(gw: Gateway) -> ProxyService {
        let webhooks = gw.inner().webhooks.as_ref().map(|hub| {
            let routes = axum::Router::new()
                .route(hub.path(), webhooks::routes())
                .with_state(gw.clone());
            (Arc::from(hub.path()), routes)
        });
        ProxyService { gw, webhooks }
    }
}

impl<B> hyper::service::Service<http::Request<B>> for ProxyService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, req: http::Request<B>) -> Self::Future {
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
        let gw = self.gw.clone();
        Box::pin(async move { Ok(proxy::handle(axum::extract::State(gw), req).await) })
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves. Never binds its own socket.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    run_with(listener, Gateway::new(config), shutdown).await
}

/// Like [`run`], with a gateway built by the caller (tests inject a manual clock this way).
pub async fn run_with(
    listener: TcpListener,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    run_with_admin(listener, None, gw, shutdown).await
}

/// Like [`run_with`], plus the admin listener ([`admin::router`]) on `admin` when given. The binary
/// binds `server.admin_listen`; tests pass `127.0.0.1:0`. Both stop on the same `shutdown`.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let config = gw.config().clone();
    let tls = match &config.server.tls {
        Some(files) => {
            Some(server::tls_acceptor(&files.cert, &files.key).map_err(std::io::Error::other)?)
        }
        None => None,
    };
    if config.auth == config::AuthMode::None {
        tracing::warn!(
            "server.auth = \"none\": every caller on the network can spend this app's budget"
        );
    }
    let limiter = gw.inner().limiter.clone();
    match limiter.restore() {
        Ok(n) if n > 0 => tracing::info!(
            calls = n,
            "restored the rolling windows from the state file"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not restore the limiter state; starting empty"),
    }
    let opts = server::ServeOptions {
        tls,
        grace: config.server.shutdown_grace,
        // hyper's hard limits sit above the Graph-shaped 414/431 checks in the pipeline.
        max_headers: config.server.max_headers * 2,
        max_head_bytes: (config.server.max_uri + config.server.max_header_bytes) as usize * 2,
    };
    let c = &config.cache;
    tracing::info!(
        enabled = c.enabled,
        default_ttl = ?c.default_ttl,
        stale_ttl = ?c.stale_ttl,
        max_bytes = c.max_bytes,
        rules = c.rules.len(),
        "response cache"
    );
    // Webhook deliveries left in queue_dir resume before anything else is spawned, so an unusable
    // queue_dir stops start-up cleanly.
    let hooks = gw.inner().webhooks.clone();
    if let Some(h) = &hooks {
        h.start()?;
    }
    // Background work lives as long as the server: the Redis link, the probe, the state save.
    let shared = limiter.redis().cloned().map(|shared| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let link = tokio::spawn(shared.run(tx));
        let gw = gw.clone();
        let events = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                apply_shared_event(&gw, &event);
            }
        });
        (link, events)
    });
    let probe = tokio::spawn(probe::run(gw.clone()));
    let sweeper = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                limiter.sweep();
            }
        })
    };
    let saver = config.limits.state_file.is_some().then(|| {
        let (limiter, every) = (limiter.clone(), config.limits.state_interval);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = limiter.save() {
                    tracing::warn!(error = %e, "could not save the limiter state");
                }
            }
        })
    });
    let admin_opts = server::ServeOptions {
        tls: None,
        grace: config.server.shutdown_grace,
        max_headers: config.server.max_headers * 2,
        max_head_bytes: (config.server.max_uri + config.server.max_header_bytes) as usize * 2,
    };
    if let Some(l) = &admin {
        tracing::info!(
            admin = %l.local_addr()?,
            token = config.server.admin_token.is_some(),
            "admin listener (/metrics, /healthz, /readyz, /admin)"
        );
    }
    // One shutdown signal fans out to both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let proxy = server::serve(
        listener,
        ProxyService::new(gw.clone()),
        opts,
        stopped(stop_rx.clone()),
    );
    let admin = async {
        match admin {
            Some(l) => {
                let svc = hyper_util::service::TowerToHyperService::new(admin::router(gw));
                server::serve(l, svc, admin_opts, stopped(stop_rx)).await
            }
            None => Ok(()),
        }
    };
    let servers = async { tokio::join!(proxy, admin) };
    tokio::pin!(servers);
    let (result, admin_result) = tokio::select! {
        r = &mut servers => r,
        _ = shutdown => {
            let _ = stop_tx.send(true);
            (&mut servers).await
        }
    };
    let result = result.and(admin_result);
    probe.abort();
    sweeper.abort();
    if let Some(h) = &hooks {
        h.stop();
    }
    if let Some((link, events)) = shared {
        link.abort();
        events.abort();
    }
    if let Some(s) = saver {
        s.abort();
    }
    if let Err(e) = limiter.save() {
        tracing::error!(error = %e, "could not save the limiter state at shutdown");
    }
    result
}

/// What another replica told us: a learned fact, or cache entries to drop. After a lost
/// subscription the whole cache goes, since invalidations may have been missed meanwhile.
fn apply_shared_event(gw: &Gateway, event: &limits::redis::Event) {
    let g = gw.inner();
    if *event == limits::redis::Event::Resubscribed {
        for app in 0..g.config.apps.len() {
            g.cache.purge(app, "/");
        }
        tracing::info!(
            "subscribed to other replicas' events; cleared the cache in case any were missed"
        );
        return;
    }
    if let Some((app, prefix)) = g.limiter.apply_event(event) {
        let dropped = g.cache.purge(app, &prefix);
        tracing::debug!(app, prefix = %prefix, dropped, "purge from another replica");
    }
}
