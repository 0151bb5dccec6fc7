//! Whether this replica can serve, and the status page's summary of it: readiness (shared by
//! `/readyz` and `/admin/status`), the limits backend (Redis) and Meta as last seen, the upstream
//! error rate, version and uptime, and who was refused, grouped.
//!
//! It owns those two answers. It must never wait longer than the readiness connect check, never
//! show a token, key or secret, and never change the limiter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::gateway::Gateway;
use crate::metrics::{RefusalGroup, GIT_REVISION, VERSION};

/// A successful call to Meta this recent makes `/readyz` answer without a connect check.
pub const READY_FRESH: Duration = Duration::from_secs(60);

/// The connect check of `/readyz` gives up after this long (or `upstream.connect_timeout`, if
/// shorter): orchestrators probe with short timeouts of their own.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The readiness verdict and what it rests on.
pub(super) struct Readiness {
    pub(super) ready: bool,
    /// Why not ready.
    reason: Option<String>,
    /// How Meta was found reachable.
    upstream: Option<String>,
    last_upstream_error: Option<String>,
    limits_backend: &'static str,
}

impl Readiness {
    /// The `/readyz` body.
    pub(super) fn json(&self) -> Value {
        let mut v = json!({ "ready": self.ready, "limits_backend": self.limits_backend });
        if let Some(r) = &self.reason {
            v["reason"] = json!(r);
            v["last_upstream_error"] = json!(self.last_upstream_error);
        }
        if let Some(u) = &self.upstream {
            v["upstream"] = json!(u);
        }
        v
    }
}

/// Not ready while Redis is away in reject mode (every call would be refused); otherwise ready when
/// the last call to Meta within [`READY_FRESH`] got an answer, or a TCP connect to it succeeds now.
pub(super) async fn readiness(gw: &Gateway) -> Readiness {
    let limiter = gw.limiter();
    let backend = limiter.backend_state();
    let last = gw.metrics().upstream_outcome();
    let last_upstream_error = last.as_ref().and_then(|o| o.error.clone());
    let verdict = |ready, reason: Option<String>, upstream: Option<String>| Readiness {
        ready,
        reason,
        upstream,
        last_upstream_error: last_upstream_error.clone(),
        limits_backend: backend,
    };
    if limiter.backend_rejects() && backend != "up" {
        let what = limiter.redis().and_then(|l| l.fault());
        let what = what.map_or("unreachable", |f| f.describe());
        let reason = format!("the shared rate-limit backend (Redis) is {what}");
        return verdict(false, Some(reason), None);
    }
    if let Some(o) = &last {
        let age = o.at.elapsed();
        if o.error.is_none() && age < READY_FRESH {
            let how = format!("answered {}s ago", age.as_secs());
            return verdict(true, None, Some(how));
        }
    }
    match connect_check(gw).await {
        Ok(addr) => verdict(true, None, Some(format!("TCP connect to {addr} succeeded"))),
        Err(reason) => verdict(false, Some(reason), None),
    }
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    revision: &'static str,
    now_unix: u64,
    started_at_unix: u64,
    uptime_secs: u64,
    ready: bool,
    /// Why not ready, or how Meta was found reachable.
    ready_detail: Option<String>,
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
pub(super) async fn status(State(gw): State<Gateway>) -> Response {
    let r = readiness(&gw).await;
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
