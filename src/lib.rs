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
//!   [`text`]: splitting short text at an ASCII byte.
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
//! - [`server`]: accept loop, TLS, HTTP/1.1 + HTTP/2 settings, stop signals, a listener's drain.
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
pub mod text;
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
/// binds `server.admin_listen`; tests pass `127.0.0.1:0`. `shutdown` starts the drain
/// ([`run_draining`]); nothing cuts its delay short.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    run_draining(listener, admin, gw, shutdown, std::future::pending()).await
}

/// How long before the end of `shutdown_grace` the calls still running are answered with a 503
/// (at most half the grace): time to write those answers before the connections close.
const STOP_CALLS_BEFORE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves until `shutdown`, then drains, in this order, each phase logged with its duration:
/// 1. `/readyz` answers 503 at once, and both listeners keep serving for `server.drain_delay` so
///    load balancers stop routing here; meanwhile each HTTP/1.1 answer of the proxy carries
///    `Connection: close` and its HTTP/2 connections get a GOAWAY. `hurry` (the binary: a second
///    SIGTERM) skips the rest of the delay.
/// 2. The proxy stops accepting; calls in flight get `server.shutdown_grace` to finish (those still
///    running a second before its end are answered with a Graph-shaped 503).
/// 3. The background work stops: the limiter state is saved, webhook deliveries are flushed.
/// 4. The admin listener closes last, so `/metrics` and `/readyz` answer through the drain.
pub async fn run_draining(
    listener: TcpListener,
    admin: Option<TcpListener>,
    gw: Gateway,
    shutdown: impl Future<Output = ()> + Send,
    hurry: impl Future<Output = ()> + Send,
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
    tracing::info!(
        drain_delay = ?config.server.drain_delay,
        shutdown_grace = ?config.server.shutdown_grace,
        "on SIGTERM: /readyz 503 and keep serving for drain_delay, then finish in-flight calls within shutdown_grace"
    );
    // Each listener's phase, set by the drain below; the admin listener's moves last.
    let (proxy_phase, proxy_rx) = tokio::sync::watch::channel(server::Phase::Serving);
    let (admin_phase, admin_rx) = tokio::sync::watch::channel(server::Phase::Serving);
    let draining = server::Draining::default();
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
    let proxy = server::serve(listener, service, opts, proxy_rx);
    let stopper = gw.clone();
    let admin = async {
        match admin {
            Some(l) => {
                let router = admin::router(gw).layer(axum::Extension(draining.clone()));
                let svc = hyper_util::service::TowerToHyperService::new(router);
                server::serve(l, svc, admin_opts, admin_rx).await
            }
            None => Ok(()),
        }
    };
    let delay = config.server.drain_delay;
    let drain = async {
        shutdown.await;
        let began = std::time::Instant::now();
        draining.start();
        let _ = proxy_phase.send(server::Phase::Leaving);
        tracing::info!(drain_delay = ?delay, "draining: /readyz answers 503; still serving while load balancers stop routing here");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                tracing::info!(took = ?began.elapsed(), "drain delay over");
            }
            _ = hurry => {
                tracing::info!(took = ?began.elapsed(), "stop requested again: skipping the rest of the drain delay");
            }
        }
        let _ = proxy_phase.send(server::Phase::Draining);
        tracing::info!(shutdown_grace = ?config.server.shutdown_grace, "stopped accepting; finishing calls in flight");
        // Shortly before the grace ends, calls still running get a Graph-shaped 503 (written while
        // their connections still stand) instead of an empty reply when the connections close.
        let grace = config.server.shutdown_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace.saturating_sub(STOP_CALLS_BEFORE.min(grace / 2))).await;
            let running = stopper.metrics().in_flight();
            if running > 0 {
                tracing::warn!(
                    calls = running,
                    "shutdown grace nearly over: answering calls still running with 503"
                );
            }
            stopper.stop_calls();
        });
        (began, std::time::Instant::now())
    };
    // The proxy stops (its drain done) only after `drain` moved it; then the background work,
    // then the admin listener.
    let proxy_and_background = async {
        let ((began, stopped_accepting), result) = tokio::join!(drain, proxy);
        tracing::info!(took = ?stopped_accepting.elapsed(), "calls in flight finished; proxy listener closed");
        let t = std::time::Instant::now();
        background.stop().await;
        tracing::info!(took = ?t.elapsed(), "limiter state saved, background work stopped");
        let _ = admin_phase.send(server::Phase::Draining);
        (began, result)
    };
    let ((began, result), admin_result) = tokio::join!(proxy_and_background, admin);
    tracing::info!(took = ?began.elapsed(), "admin listener closed; drain complete");
    result.and(admin_result)
}
