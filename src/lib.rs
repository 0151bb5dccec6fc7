//! graphgate: a reverse proxy that internal services put in front of Meta's Graph API (the
//! WhatsApp Business Management API). It holds the system-user tokens, spends each WhatsApp
//! Business Account's call budget exactly as Meta counts it, and answers repeated reads from cache.
//!
//! # Layout
//! One concept per module; a module with several parts is a folder whose `mod.rs` is the facade.
//! Dependencies point down this list, never up (`scripts/check-modules` checks it in CI): leaves
//! first, then what the request path and the background tasks share, then the state that holds
//! them, then what serves it.
//!
//! Leaves (no imports from the crate, or only from other leaves):
//! - [`config`]: the TOML file and `GRAPHGATE_*` overrides, validated whole into a typed
//!   [`config::Config`] (`load`, `env`, `raw`, `check`, `validate/`, and one file per big section).
//! - [`ids`]: Graph object ids and API versions. [`sync`]: locks that outlive a panic.
//!   [`clock`]: injected time. [`body`]: the one bounded read of a body (size and deadline).
//! - [`target`]: checks and decodes the request path and query; strips caller credentials.
//!
//! What calls are, and what graphgate keeps:
//! - [`error`]: the one mapping from graphgate's failures to Graph-shaped HTTP errors (it names the
//!   limiter's refusal types and the target's error, nothing that does work).
//! - [`auth`]: client keys, WABA and method allowlists, and which token a call uses.
//! - [`classify`]: which of Meta's budgets (the seed's rate-limit table) a call spends.
//! - [`limits`]: exact rolling-window buckets (`log`, `permit`, `wait`), Meta's feedback,
//!   learned facts, client quotas, persistence, the admin view, and the Redis link that replicas
//!   share (`redis`, `replicas`); `types` is its vocabulary.
//! - [`cache`]: the response cache (moka): keys, caller directives, plans, entries, the store and
//!   the coalescing of identical misses.
//! - [`upstream`]: the pooled rustls client to Meta (`pool`, `tls`), header hygiene, `appsecret_proof`.
//! - [`rewrite`]: paging links rewritten to the proxy, tokens redacted from answers.
//! - [`metrics`]: the Prometheus registry of one gateway; labels only from config or fixed sets.
//! - [`reload`]: what a reload compares (restart-only keys), hashes and watches (secret files).
//!
//! Shared by the request path and background work:
//! - [`metered`]: a call to Meta, admit -> send -> settle -> learn; the proxy and the probe both
//!   call through it.
//! - [`invalidate`]: the one way to drop cached views, here and on the other replicas.
//! - [`probe`]: start-up and periodic checks of whether `active = "auto"` WABAs have a registered number.
//! - [`webhooks`]: Meta's webhooks: handshake, signatures, cache invalidation, durable fan-out.
//!
//! The state, and what serves it:
//! - [`gateway`]: the [`Gateway`] state (handles built from the config, the config generation a
//!   reload swaps) and its background tasks.
//! - [`proxy`]: the request pipeline, one file per step, check -> authenticate -> classify ->
//!   authorize -> cache -> limit -> upstream -> rewrite -> respond, and the listener's service.
//! - [`admin`]: the admin listener: health, readiness, `/metrics`, limits and cache JSON, status page.
//! - [`server`]: accept loop, TLS, HTTP/1.1 + HTTP/2 settings, graceful shutdown.
//! - [`telemetry`]: tracing setup (JSON lines or text) and the per-request tag.
//!
//! Beside it:
//! - [`sim`]: a local twin of the Graph API for tests, benchmarks and the demo.
//! - [`demo`]: the simulator and the proxy in one process, ready for curl.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cache;
pub mod classify;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod ids;
pub mod invalidate;
pub mod limits;
pub mod metered;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod server;
pub mod sim;
pub mod sync;
pub mod target;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;

use std::future::Future;

use tokio::net::TcpListener;

pub use config::Config;
pub use gateway::Gateway;
pub use proxy::ProxyService;

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
        Some(files) => Some(server::tls_acceptor(files).map_err(std::io::Error::other)?),
        None => None,
    };
    if config.auth == config::AuthMode::None {
        tracing::warn!(
            "server.auth = \"none\": every caller on the network can spend this app's budget"
        );
    }
    let opts = server::ServeOptions::new(&config.server, tls);
    let c = &config.cache;
    tracing::info!(
        enabled = c.enabled,
        default_ttl = ?c.default_ttl,
        stale_ttl = ?c.stale_ttl,
        max_bytes = c.max_bytes,
        rules = c.rules.len(),
        "response cache"
    );
    // Restores the limiter state, resumes webhook deliveries (an unusable queue_dir stops
    // start-up here) and starts the background work that lives as long as the server.
    let background = gw.start()?;
    let admin_opts = server::ServeOptions::admin(&config.server);
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
    // The proxy's layers, outer to inner (the connection cap and deadlines are the listener's):
    // - the cap on requests in flight sheds load with a 503 before any work is done.
    let capacity = server::Capacity::of(&config.server);
    tracing::info!(
        max_connections = capacity.connections,
        max_in_flight = capacity.in_flight,
        "load shedding"
    );
    if capacity.connections < config.server.max_connections
        || capacity.in_flight < config.server.max_in_flight
    {
        tracing::warn!(
            max_connections = capacity.connections,
            max_in_flight = capacity.in_flight,
            "server.max_connections / max_in_flight lowered to fit the open-file limit (ulimit -n)"
        );
    }
    let service = tower::ServiceBuilder::new()
        .layer(server::InFlightLayer::new(capacity.in_flight))
        .service(ProxyService::new(gw.clone()));
    let service = hyper_util::service::TowerToHyperService::new(service);
    let proxy = server::serve(listener, service, opts, stopped(stop_rx.clone()));
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
    background.stop().await;
    result
}
