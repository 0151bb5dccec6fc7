//! The admin listener's router: `/healthz`, `/readyz`, `/metrics`, `/admin/limits`,
//! `/admin/cache`, `POST /admin/cache/purge`, `POST /admin/reload`, `/admin/status` (`health.rs`), and the status page
//! (`status.rs`) at `/admin` and `/`.
//!
//! It is served only on `server.admin_listen`, never on the proxy port (there every path is a Graph
//! path). When `server.admin_token` is set, every path but `/healthz` needs it as a bearer token.
//! It must never show a token, client key or app secret, never change the limiter's state, and never
//! let a probe wait longer than a short connect check.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::header::{self, HeaderValue};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{OnLimit, Secret};
use crate::gateway::Gateway;
use crate::limits::Reported;

use crate::metrics::{self, Rejection};
mod health;
pub mod healthcheck;
use health::unix_now;
pub use health::READY_FRESH;
mod status;

/// Longest `prefix` a purge accepts (the proxy's own URI limit is of the same order).
const MAX_PURGE_PREFIX: usize = 2048;

/// The admin router, with the token check in front of every route.
pub fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/admin/limits", get(limits))
        .route("/admin/cache", get(cache_stats))
        .route("/admin/cache/purge", post(purge))
        .route("/admin/reload", post(reload))
        .route("/admin/status", get(health::status))
        .route("/admin", get(status::page))
        .route("/", get(status::page))
        .fallback(not_found)
        // Outermost, so unknown paths need the token too and reveal nothing without it.
        .layer(middleware::from_fn_with_state(gw.clone(), require_token))
        .with_state(gw)
}

async fn require_token(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    // The newest generation: a reload may have rotated the admin token.
    let gw = gw.current();
    let Some(token) = &gw.config().server.admin_token else {
        return next.run(req).await;
    };
    // Liveness stays open so a container health check needs no secret.
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if given.is_some_and(|g| token_matches(g, token)) {
        return next.run(req).await;
    }
    let mut resp = error(StatusCode::UNAUTHORIZED, "admin token required");
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"graphgate-admin\""),
    );
    resp
}

/// Compares digests in constant time, so neither the token's bytes nor its length leak through
/// timing.
fn token_matches(given: &str, token: &Secret) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(token.expose().as_bytes());
    a.ct_eq(&b).into()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such admin path")
}

// ---------------------------------------------------------------- health

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// 503 from the moment a drain begins (the `Draining` the server hands the router); otherwise as
/// `health::readiness` finds the limits backend and Meta. Config is loaded and the proxy's
/// listener is bound before this listener serves at all.
async fn readyz(
    State(gw): State<Gateway>,
    draining: Option<axum::Extension<crate::server::Draining>>,
) -> Response {
    let r = health::readiness(&gw, draining.and_then(|d| d.since())).await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r.json())).into_response()
}

// ---------------------------------------------------------------- metrics

async fn metrics_text(State(gw): State<Gateway>) -> Response {
    let g = &gw;
    health::refresh_degraded(g).await;
    // From Redis when the buckets are shared, so every replica reports the same budget.
    let buckets = g.limiter().view().await;
    let body = g.metrics().render(
        buckets,
        g.limiter(),
        g.cache(),
        gw.webhooks().map(|h| h.stats()),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------- limits

#[derive(Serialize)]
struct LimitsView {
    window_secs: u64,
    on_limit: &'static str,
    buckets: Vec<BucketJson>,
    /// Meta's app-wide usage (X-App-Usage), per app; `null` until Meta has sent one.
    app_usage: Vec<AppUsage>,
    recent_rejections: Vec<Rejection>,
}

#[derive(Serialize)]
struct BucketJson {
    app: String,
    bucket: String,
    class: &'static str,
    waba: Option<String>,
    limit: u32,
    used: u32,
    in_flight: u32,
    remaining: u32,
    reset_in_secs: u64,
    reset_at_unix: u64,
    blocked_for_secs: u64,
    blocked_until_unix: Option<u64>,
    waiting: usize,
    rejected: u64,
    /// Meta's latest X-Business-Use-Case-Usage for this bucket, in percent.
    meta_usage: Option<Reported>,
}

#[derive(Serialize)]
struct AppUsage {
    app: String,
    meta_usage: Option<Reported>,
}

async fn limits(State(gw): State<Gateway>) -> Response {
    let g = &gw;
    let now = unix_now();
    let buckets = g
        .limiter()
        .view()
        .await
        .into_iter()
        .map(|b| {
            let waba = b.scope.strip_prefix("waba:").map(str::to_string);
            let class = match (&waba, b.scope.as_str()) {
                (Some(_), _) => "waba",
                (None, "credit_line") => "credit_line",
                (None, _) => "other",
            };
            BucketJson {
                class,
                waba,
                limit: b.limit,
                used: b.used,
                in_flight: b.in_flight,
                remaining: b.remaining,
                reset_in_secs: b.reset_in_secs,
                reset_at_unix: now + b.reset_in_secs,
                blocked_for_secs: b.blocked_for_secs,
                blocked_until_unix: (b.blocked_for_secs > 0).then_some(now + b.blocked_for_secs),
                waiting: b.waiting,
                rejected: b.rejected,
                meta_usage: b.reported,
                app: b.app,
                bucket: b.scope,
            }
        })
        .collect();
    let app_usage = g
        .limiter()
        .app_usage()
        .into_iter()
        .map(|(app, meta_usage)| AppUsage { app, meta_usage })
        .collect();
    Json(LimitsView {
        window_secs: g.limiter().window().as_secs(),
        on_limit: match g.limiter().on_limit() {
            OnLimit::Reject => "reject",
            OnLimit::Wait => "wait",
        },
        buckets,
        app_usage,
        recent_rejections: g.metrics().recent_rejections(),
    })
    .into_response()
}

// ---------------------------------------------------------------- cache

async fn cache_stats(State(gw): State<Gateway>) -> Response {
    let g = &gw;
    let (entries, bytes) = g.cache().usage();
    let counts = g.metrics().cache_counts();
    let get = |name: &str| {
        counts
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    let (hit, miss) = (get("hit"), get("miss"));
    // hits / (hits + misses), the same ratio as the Grafana dashboard's panel. Stale answers are a
    // fallback when Meta fails, and a bypass never asked the cache; both are counted apart.
    let hit_ratio = (hit + miss > 0).then(|| hit as f64 / (hit + miss) as f64);
    let requests: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    Json(json!({
        "enabled": g.config().cache.enabled,
        "entries": entries,
        "bytes": bytes,
        "max_bytes": g.config().cache.max_bytes,
        "requests": requests,
        "hit_ratio": hit_ratio,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    app: String,
    prefix: String,
}

/// `{"app": "main", "prefix": "/102290129340398"}` drops that app's entries under the prefix
/// (`/` drops all of the app's entries).
async fn purge(State(gw): State<Gateway>, body: Bytes) -> Response {
    let req: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected a JSON body {\"app\": \"<name>\", \"prefix\": \"/<path>\"}",
            )
        }
    };
    let g = &gw;
    let Some(app) = g.config().apps.iter().position(|a| a.name == req.app) else {
        return error(StatusCode::NOT_FOUND, "no app with that name in the config");
    };
    if !req.prefix.starts_with('/') || req.prefix.len() > MAX_PURGE_PREFIX {
        return error(
            StatusCode::BAD_REQUEST,
            "prefix must be a path starting with /",
        );
    }
    let purged = g.invalidator().purge(app, &req.prefix);
    tracing::info!(app = %req.app, prefix = %req.prefix, purged, "cache purged by the admin API");
    Json(json!({ "app": req.app, "prefix": req.prefix, "purged": purged })).into_response()
}

/// `POST /admin/reload`: reads the config file and every secret again and swaps the whole in, or
/// keeps the config in use. Answers the [`crate::reload::Report`]: 200 when applied, 422 when the
/// new config has problems, 409 when it changes a key that needs a restart.
async fn reload(State(gw): State<Gateway>) -> Response {
    let report = gw.reload("admin").await;
    let status = match report.outcome {
        "ok" => StatusCode::OK,
        "refused" => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The right token matches; a prefix of it, a longer one or another value does not.
    #[test]
    fn admin_token_comparison_matches_only_the_exact_token() {
        let t = Secret::new("s3cret-admin");
        assert!(token_matches("s3cret-admin", &t));
        assert!(!token_matches("s3cret", &t));
        assert!(!token_matches("s3cret-admin!", &t));
        assert!(!token_matches("", &t));
    }
}
