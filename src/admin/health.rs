//! Whether this replica can serve, and the status page's summary of it: readiness (shared by
//! `/readyz` and `/admin/status`: draining, the limits backend (Redis), Meta) with what it serves
//! without (`degraded`), the upstream error rate, version and uptime, and who was refused, grouped.
//!
//! It owns those two answers. It must never wait longer than the readiness connect check, never
//! show a token, key or secret, and never change the limiter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::gateway::Gateway;
use crate::metrics::{RefusalGroup, GIT_REVISION, VERSION};
use crate::server::Draining;

/// A successful call to Meta this recent makes `/readyz` answer without a connect check.
pub const READY_FRESH: Duration = Duration::from_secs(60);

/// The connect check of `/readyz` gives up after this long (or `upstream.connect_timeout`, if
/// shorter): orchestrators probe with short timeouts of their own.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis found away (a health round trip or a call failed or went unanswered within
/// `backend_timeout`) keeps it counted away for `backend_timeout` plus this long: one interval of
/// the link's health checks (500 ms) with room to spare, so a hung Redis does not flap between
/// its checks' cool-downs. It counts as back once its checks answer for that long.
const REDIS_SETTLE: Duration = Duration::from_secs(1);

/// The readiness verdict and what it rests on.
pub(super) struct Readiness {
    pub(super) ready: bool,
    /// Why not ready.
    reason: Option<String>,
    /// How Meta was found: reachable (and how), or unreachable (and why).
    upstream: Option<String>,
    last_upstream_error: Option<String>,
    limits_backend: &'static str,
    /// What this replica serves without ([`crate::metrics::DEGRADED_REASONS`]).
    degraded: Vec<&'static str>,
    draining: bool,
}

impl Readiness {
    /// The `/readyz` body.
    pub(super) fn json(&self) -> Value {
        let mut v = json!({
            "ready": self.ready,
            "draining": self.draining,
            "degraded": self.degraded,
            "limits_backend": self.limits_backend,
        });
        if let Some(r) = &self.reason {
            v["reason"] = json!(r);
        }
        if self.reason.is_some() || !self.degraded.is_empty() {
            v["last_upstream_error"] = json!(self.last_upstream_error);
        }
        if let Some(u) = &self.upstream {
            v["upstream"] = json!(u);
        }
        v
    }
}

/// Whether this replica can serve, in this order:
/// - draining (after SIGTERM): not ready, at once, so balancers stop routing here;
/// - the shared limits backend (Redis) away, as its health round trips found it within
///   `limits.backend_timeout`: not ready under `on_backend_error = "reject"` (every call would be
///   refused), degraded under `"local"`;
/// - Meta: reachable when the last call within [`READY_FRESH`] got an answer or a TCP connect
///   succeeds now. Unreachable makes the replica degraded, and unready only when the cache is off
///   (with it on, cached and stale answers are still served).
///
/// Sets `graphgate_degraded` from what it found.
pub(super) async fn readiness(gw: &Gateway, draining: Option<Duration>) -> Readiness {
    let limiter = gw.limiter();
    let backend = limiter.backend_state();
    let last = gw.metrics().upstream_outcome();
    let mut r = Readiness {
        ready: true,
        reason: None,
        upstream: None,
        last_upstream_error: last.as_ref().and_then(|o| o.error.clone()),
        limits_backend: backend,
        degraded: Vec::new(),
        draining: draining.is_some(),
    };
    if let Some(since) = draining {
        r.ready = false;
        r.reason = Some(format!(
            "draining: shutting down (stop requested {}s ago)",
            since.as_secs()
        ));
        return r;
    }
    let redis_away = match limiter.redis() {
        Some(link) => backend != "up" || link.away_within(link.timeout() + REDIS_SETTLE),
        None => backend == "down",
    };
    gw.metrics().set_degraded("limits_backend", redis_away);
    if redis_away {
        r.degraded.push("limits_backend");
        if limiter.backend_rejects() {
            r.ready = false;
            let what = limiter.redis().and_then(|l| l.fault());
            let what = what.map_or("unreachable", |f| f.describe());
            r.reason = Some(format!("the shared rate-limit backend (Redis) is {what}"));
            return r;
        }
    }
    let fresh = last
        .as_ref()
        .filter(|o| o.error.is_none() && o.at.elapsed() < READY_FRESH);
    let upstream = match fresh {
        Some(o) => Ok(format!("answered {}s ago", o.at.elapsed().as_secs())),
        None => connect_check(gw)
            .await
            .map(|addr| format!("TCP connect to {addr} succeeded")),
    };
    gw.metrics().set_degraded("upstream", upstream.is_err());
    match upstream {
        Ok(how) => r.upstream = Some(how),
        Err(why) if gw.config().cache.enabled => {
            r.degraded.push("upstream");
            r.upstream = Some(format!("{why}; serving cached and stale answers only"));
        }
        Err(why) => {
            r.degraded.push("upstream");
            r.ready = false;
            r.reason = Some(why);
        }
    }
    r
}

/// Refreshes `graphgate_degraded` for a scrape, the way `/readyz` finds it.
pub(super) async fn refresh_degraded(gw: &Gateway) {
    readiness(gw, None).await;
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    revision: &'static str,
    now_unix: u64,
    started_at_unix: u64,
    uptime_secs: u64,
    ready: bool,
    /// Why not ready, or how Meta was found.
    ready_detail: Option<String>,
    /// After SIGTERM, until the process exits.
    draining: bool,
    /// What this replica serves without: `upstream` (Meta unreachable), `limits_backend` (Redis).
    degraded: Vec<&'static str>,
    /// `memory` (no Redis), `up`, `down` or `connecting`.
    limits_backend: &'static str,
    meta: Meta,
    in_flight: i64,
    /// Refusals since start by app, client, bucket and reason, most first.
    refused: Vec<RefusalGroup>,
}

#[derive(Serialize)]
struct Meta {
    /// `answering`, `failing` or `no call yet`.
    state: &'static str,
    last_call_unix: Option<u64>,
    last_error: Option<String>,
    calls: u64,
    failed: u64,
    /// failed / calls since start (5xx, connection errors and timeouts count as failed).
    error_rate: Option<f64>,
}

/// `GET /admin/status`: the status page's header and health section.
pub(super) async fn status(
    State(gw): State<Gateway>,
    draining: Option<Extension<Draining>>,
) -> Response {
    let r = readiness(&gw, draining.and_then(|d| d.since())).await;
    let m = gw.metrics();
    let now = unix_now();
    let last = m.upstream_outcome();
    let (calls, failed) = m.upstream_counts();
    let meta = Meta {
        state: match &last {
            None => "no call yet",
            Some(o) if o.error.is_none() => "answering",
            Some(_) => "failing",
        },
        last_call_unix: last
            .as_ref()
            .map(|o| now.saturating_sub(o.at.elapsed().as_secs())),
        last_error: last.and_then(|o| o.error),
        calls,
        failed,
        error_rate: (calls > 0).then(|| failed as f64 / calls as f64),
    };
    Json(Status {
        version: VERSION,
        revision: GIT_REVISION,
        now_unix: now,
        started_at_unix: m.started_unix(),
        uptime_secs: now.saturating_sub(m.started_unix()),
        ready: r.ready,
        ready_detail: r.reason.clone().or(r.upstream.clone()),
        draining: r.draining,
        degraded: r.degraded.clone(),
        limits_backend: r.limits_backend,
        meta,
        in_flight: m.in_flight(),
        refused: m.refusals_by_caller(),
    })
    .into_response()
}

async fn connect_check(gw: &Gateway) -> Result<String, String> {
    let cfg = &gw.config().upstream;
    let url = &cfg.url;
    let host = url
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addr = format!("{host}:{port}");
    let limit = cfg.connect_timeout.min(READY_CONNECT_TIMEOUT);
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(_)) => Ok(addr),
        Ok(Err(e)) => Err(format!("upstream {addr} unreachable: {e}")),
        Err(_) => Err(format!(
            "upstream {addr} unreachable: no connection within {limit:?}"
        )),
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
